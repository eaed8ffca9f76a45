"""python -m exporter <subcommand>. Library errors become one clear line and a non-zero exit."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

from models import ToolchainError, list_variants

EXIT_ERROR = 2


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--variant", required=True, help=f"one of: {', '.join(list_variants())}")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--width", type=float, default=None,
                   help="channel-width multiplier (default 1.0, the full-size model)")


def _cmd_card(args: argparse.Namespace) -> int:
    from models.card import card_markdown, model_card

    card = model_card(args.variant, args.img_size, args.num_classes, args.width or 1.0)
    markdown = card_markdown(card)
    if args.out:
        from .files import write_text_atomic

        out = Path(args.out)
        write_text_atomic(out / "card.md", markdown)
        write_text_atomic(out / "card.json", json.dumps(card.to_json(), indent=2) + "\n")
    print(json.dumps(card.to_json(), indent=2) if args.json else markdown, end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exporter", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    card = sub.add_parser("card", help="parameters, MACs and activation memory of a variant")
    _add_model_args(card)
    card.add_argument("--img-size", type=int, default=224)
    card.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    card.add_argument("--out", help="also write card.md and card.json into this folder")
    card.set_defaults(run=_cmd_card)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ToolchainError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
