"""``shareddiff <verb>``: one command-line entry point; each verb is a function listed in ``VERBS``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from shareddiff.presets import FAMILIES, PRESET_NAMES, SIZES, size_of


def cmd_params(preset: str, as_json: bool = False, compare: bool = False) -> str:
    """Parameter counts by component for PRESET (or, with --compare, the three variants of its size)."""
    from shareddiff.config import ModelConfig
    from shareddiff.params import count_parameters, format_comparison, format_report

    names = [f"{family}-{size_of(preset)}" for family in FAMILIES] if compare else [preset]
    reports = [count_parameters(ModelConfig.from_preset(n)) for n in names]
    if as_json:
        data = {n: r.as_dict() for n, r in zip(names, reports, strict=True)}
        return json.dumps(data if compare else data[preset], indent=2)
    return format_comparison(names, reports) if compare else format_report(preset, reports[0])


def _add_params(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help=cmd_params.__doc__, description=cmd_params.__doc__)
    p.add_argument("preset", help=f"a preset name, or with --compare a size ({', '.join(SIZES)})")
    p.add_argument("--json", dest="as_json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--compare", action="store_true", help="the three variants of the preset's size side by side")
    p.set_defaults(func=cmd_params)


VERBS: list[Callable[[argparse._SubParsersAction], None]] = [_add_params]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shareddiff",
        description="Shared DIFF Transformer, DIFF Transformer and Transformer language models.",
        epilog=f"presets: {', '.join(PRESET_NAMES)}",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    func = args.pop("func")
    args.pop("verb")
    try:
        out = func(**args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if out:
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
