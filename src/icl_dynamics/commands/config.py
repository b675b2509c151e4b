"""``config show [--config F] [--set K=V ...]``: the resolved config, each key with its meaning."""

from __future__ import annotations

import yaml


def configure(p):
    p.add_argument("action", choices=["show"], help="show: print the resolved config with each key's meaning")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key (repeatable)")


def described_keys() -> list[tuple[str, str]]:
    """(dotted key, meaning) for every config key, in the config's order."""
    from pydantic import BaseModel

    from ..config import RunConfig

    out = []
    for name, field in RunConfig.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += [(f"{name}.{k}", f.description or "") for k, f in sub.model_fields.items()]
        else:
            out.append((name, field.description or ""))
    return out


def show(cfg) -> str:
    """YAML of ``cfg`` with each key's meaning as a comment after it."""
    meaning = dict(described_keys())
    lines = []
    for section, value in cfg.to_dict().items():
        if isinstance(value, dict):
            lines.append(f"{section}:")
            for k, v in value.items():
                text = yaml.safe_dump({k: v}, default_flow_style=True, width=10**6).strip()[1:-1]
                note = meaning.get(f"{section}.{k}", "")
                lines.append(f"  {text}" + (f"  # {note}" if note else ""))
        else:
            note = meaning.get(section, "")
            lines.append(yaml.safe_dump({section: value}, default_flow_style=False).strip() + (f"  # {note}" if note else ""))
    return "\n".join(lines)


def run(args) -> int:
    from ..config import load_config

    print(show(load_config(args.config, args.overrides)))
    return 0
