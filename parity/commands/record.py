"""Record cases: generate them (profiles, cfgs) or re-record existing ones, with a reference's results.

Sources (any mix, at least one):
  --profile NAME ...   N samples of each profile, one case per head each (the
                       cases `run --profile NAME --cases N --seed S` compares)
  --cfg FILE.cfg ...   N samples for each real cfg, one case per [yolo] layer
                       each, at the layer's true grid (--flavor applies)
  --from FILE ...      the input and truth of existing case files (or folders
                       of them), recorded again
  --darknet-train      a real darknet training run (pjreddie's library, Debian's
                       package by default): a network built from a cfg it ships
                       (yolov3-tiny.cfg, at --size with --batch, random weights
                       from --seed) trains --iterations iterations on its
                       photographs with the boxes of --labels; after each forward
                       pass every [yolo] layer's input, truth, output, delta and
                       cost become one case (see parity.darknet_train). Not
                       combined with the sources above; --reference does not
                       apply (darknet itself fills the cases)

Each case is run through the reference (our C reference by default, or a
real libdarknet) and written as a format-v1 .npz file under --out with its
output, delta and stats, and provenance in meta: implementation, flavor,
generator, seed, profile and the darknet-parity version. File names come
from the case id (profile, sample, head, seed) or the source file's name,
with characters other than letters, digits, '.', '-' and '_' replaced by
'_'; the same command writes the same names.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Iterator

from ..cases import check_seed
from ..errors import EXIT_OK, ParityError
from . import Command, add_reference_arguments

# Samples per cfg when --cases is not given (a profile has its own count), as `run`.
DEFAULT_CFG_SAMPLES = 4
# Provenance of a recording that does not carry over to a new one.
_PROVENANCE = ("implementation", "commit", "build", "recorded_by", "parity_version", "reference")


def safe_name(text: str) -> str:
    """A file-name stem from ``text``: unsafe characters (runs of them) become '_'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"
    return name[:150]


def implementation_of(reference: str, flavor: str, darknet_lib: str | None) -> str:
    """meta["implementation"] of a recording made with ``reference``."""
    if reference == "c":
        return f"darknet-parity C reference ({flavor} semantics)"
    from ..backends.darknet_library import DEFAULT_LIB

    return str(Path(darknet_lib).resolve() if darknet_lib else DEFAULT_LIB)


def fill_from_reference(case: Any, reference: str = "c", darknet_lib: str | None = None,
                        darknet_include: str | None = None) -> Any:
    """``case`` with output, delta and stats from the reference, and meta saying which."""
    from .. import __version__
    from ..reference import run_reference

    res = run_reference(case.config, case.input, case.truth, flavor=case.flavor, backend=reference,
                        darknet_lib=darknet_lib, darknet_include=darknet_include)
    case.output, case.delta, case.stats = res.output, res.delta, res.stats.as_dict()
    meta = {k: v for k, v in case.meta.items() if k not in _PROVENANCE}
    meta.update({"implementation": implementation_of(reference, case.flavor, darknet_lib),
                 "reference": reference, "flavor": case.flavor,
                 "recorded_by": "darknet-parity record", "parity_version": __version__})
    if reference == "c":
        from ..backends.ref_build import CFLAGS

        meta["build"] = " ".join(CFLAGS)
    meta.setdefault("generator", case.name)
    meta.setdefault("seed", None)
    meta.setdefault("profile", None)
    case.meta = meta
    return case


class Record(Command):
    __doc__ = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        src = parser.add_argument_group("sources")
        src.add_argument("--profile", metavar="NAME", nargs="+", action="extend", default=[],
                         help="profile(s) to generate cases for")
        src.add_argument("--cfg", metavar="FILE.cfg", nargs="+", action="extend", default=[],
                         help="real darknet cfg file(s) to generate cases for")
        src.add_argument("--from", dest="from_files", metavar="FILE", nargs="+", action="extend", default=[],
                         help="case files (.npz) or folders whose input and truth are recorded again")
        parser.add_argument("--cases", type=int, metavar="N",
                            help="samples per profile or cfg, one case per head each (default: each profile's "
                                 f"own count; {DEFAULT_CFG_SAMPLES} per cfg)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the generated cases (default 0)")
        parser.add_argument("--flavor", choices=("alexeyab", "pjreddie"), default="alexeyab",
                            help="darknet flavor of --cfg cases (profiles name their own; default alexeyab)")
        parser.add_argument("--profiles-file", metavar="YAML", action="append", default=[],
                            help="extra profile file(s) merged over the shipped ones")
        parser.add_argument("--out", required=True, metavar="DIR", help="folder to write the .npz files to")
        parser.add_argument("--overwrite", action="store_true",
                            help="write into a folder that already holds recordings (.npz), replacing files of "
                                 "the same name (refused otherwise)")
        add_reference_arguments(parser)
        add_darknet_train_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rich.console import Console
        from rich.table import Table

        from ..case import save_case

        if args.darknet_train:
            return record_darknet_training(args)
        given = [flag for flag, dest in _TRAIN_OPTIONS if getattr(args, dest) is not None]
        if given:
            raise ParityError(f"{', '.join(given)}: only with --darknet-train")
        if not (args.profile or args.cfg or args.from_files):
            raise ParityError("nothing to record: give --profile NAME, --cfg FILE.cfg, --from FILE or --darknet-train")
        if args.cases is not None and args.cases < 1:
            raise ParityError(f"--cases {args.cases}: must be at least 1")
        check_seed(args.seed)
        if args.reference == "c" and (args.darknet_lib or args.darknet_include):
            raise ParityError("--darknet-lib/--darknet-include need --reference libdarknet")
        out = Path(args.out)
        check_out_folder(out, args.overwrite, args.from_files)
        sources = list(self._sources(args))      # every source is checked before anything is written
        table = Table(title=f"recorded with the {args.reference} reference into {out}", title_justify="left")
        for col in ("file", "case", "input", "truths", "cost"):
            table.add_column(col, justify="right" if col in ("truths", "cost") else "left", no_wrap=col != "case")
        used: set[str] = set()
        written = 0
        for label, stem, make in sources:
            case = fill_from_reference(make(), args.reference, args.darknet_lib, args.darknet_include)
            path = out / f"{_unique(stem, used)}.npz"
            save_case(path, case)
            written += 1
            truths = int((case.truth[..., 0] != 0).sum())
            table.add_row(str(path), label, "x".join(map(str, case.input.shape)), str(truths),
                          f"{case.stats.get('cost', float('nan')):.6g}")
        console = Console(soft_wrap=True, highlight=False, width=None if _tty() else 200)
        console.print(table)
        console.print(f"{written} case(s) written to {out}")
        return EXIT_OK

    def _sources(self, args: argparse.Namespace) -> Iterator[tuple[str, str, Any]]:
        """(label, file stem, () -> Case) for every case, in order; bad sources fail here."""
        from ..profiles import case_id, cfg_cases, load_profiles, profile_cases
        from ..replay import case_paths

        if args.profile:
            known = load_profiles(args.profiles_file)
            for name in args.profile:
                if name not in known:
                    raise ParityError(f"unknown profile {name!r}; known: {', '.join(known)}")
        for cfg in args.cfg:
            if not Path(cfg).is_file():
                raise ParityError(f"{cfg}: no such cfg file")
        files = case_paths(args.from_files)
        generated = []
        for name in args.profile:
            count = args.cases if args.cases is not None else known[name].count
            generated.append(profile_cases(known[name], count, args.seed))
        for cfg in args.cfg:
            count = args.cases if args.cases is not None else DEFAULT_CFG_SAMPLES
            generated.append(cfg_cases(cfg, count, args.seed, flavor=args.flavor))
        for stream in generated:
            for case in stream:
                cid = case_id(case)
                yield cid, f"{safe_name(cid)}_seed{args.seed}", (lambda case=case: case)
        for path in files:
            yield str(path), safe_name(path.stem), (lambda path=path: _rerecord(path))


# Options of --darknet-train: (flag, dest); each defaults to None so "not given" is visible.
_TRAIN_OPTIONS = (("--darknet-cfg", "darknet_cfg"), ("--images", "images"), ("--labels", "labels"),
                  ("--iterations", "iterations"), ("--size", "size"), ("--batch", "batch"),
                  ("--learning-rate", "learning_rate"))


def add_darknet_train_arguments(parser: argparse.ArgumentParser) -> None:
    """--darknet-train and its options (defaults: Debian's package and the committed fixtures' settings)."""
    from ..darknet_train import DEFAULT_BATCH, DEFAULT_CFG, DEFAULT_IMAGE_DIR, DEFAULT_ITERATIONS, DEFAULT_SIZE

    group = parser.add_argument_group("darknet training run (--darknet-train)")
    group.add_argument("--darknet-train", action="store_true",
                       help="record a real darknet training run (pjreddie's library) instead")
    group.add_argument("--darknet-cfg", metavar="CFG", help=f"network cfg (default {DEFAULT_CFG})")
    group.add_argument("--images", metavar="IMAGE", nargs="+",
                       help=f"JPEG/PNG/BMP images, fed in this order (default: {DEFAULT_IMAGE_DIR}/*.jpg, sorted)")
    group.add_argument("--labels", metavar="FILE",
                       help="labels YAML (default: fixtures/darknet-train/labels.yaml, boxes for Debian's photographs)")
    group.add_argument("--iterations", type=int, metavar="N",
                       help=f"training iterations (default {DEFAULT_ITERATIONS})")
    group.add_argument("--size", type=int, metavar="S", help=f"network width and height (default {DEFAULT_SIZE})")
    group.add_argument("--batch", type=int, metavar="B", help=f"images per iteration (default {DEFAULT_BATCH})")
    group.add_argument("--learning-rate", type=float, metavar="LR",
                       help="learning rate (default: the cfg's; burn_in is always 0)")


def record_darknet_training(args: argparse.Namespace) -> int:
    """``record --darknet-train``: run darknet's training and write its [yolo] cases under --out."""
    from rich.console import Console
    from rich.table import Table

    from ..darknet_train import TrainSettings, iter_summary, record_training, write_recording

    if args.profile or args.cfg or args.from_files:
        raise ParityError("--darknet-train records a darknet training run; it cannot be combined with "
                          "--profile, --cfg or --from")
    if args.cases is not None or args.profiles_file:
        raise ParityError("--cases and --profiles-file do not apply to --darknet-train (use --iterations)")
    out = Path(args.out)
    check_seed(args.seed)
    check_out_folder(out, args.overwrite, [])
    defaults = TrainSettings()
    settings = TrainSettings(
        cfg=Path(args.darknet_cfg) if args.darknet_cfg else defaults.cfg,
        images=tuple(Path(p) for p in args.images) if args.images else None,
        labels=Path(args.labels) if args.labels else defaults.labels,
        iterations=defaults.iterations if args.iterations is None else args.iterations,
        size=defaults.size if args.size is None else args.size,
        batch=defaults.batch if args.batch is None else args.batch,
        seed=args.seed,
        learning_rate=args.learning_rate,
        darknet_lib=Path(args.darknet_lib) if args.darknet_lib else None,
        darknet_include=Path(args.darknet_include) if args.darknet_include else None,
    )
    recording = record_training(settings)
    paths = write_recording(recording, out)
    console = Console(soft_wrap=True, highlight=False, width=None if _tty() else 200)
    for line in iter_summary(recording):
        console.print(line)
    table = Table(title=f"recorded from darknet's training run into {out}", title_justify="left")
    for col in ("file", "iteration", "layer", "input", "truths", "cost"):
        table.add_column(col, justify="left" if col in ("file", "input") else "right", no_wrap=True)
    for path, case in zip(paths, recording.cases):
        truths = int((case.truth[..., 0] != 0).sum())
        table.add_row(str(path), str(case.meta["iteration"]), str(case.meta["layer"]),
                      "x".join(map(str, case.input.shape)), str(truths), f"{case.stats['cost']:.6g}")
    console.print(table)
    console.print(f"{len(paths)} case(s) written to {out}")
    return EXIT_OK


def check_out_folder(out: Path, overwrite: bool, inputs: list[str]) -> None:
    """Recording never destroys data: --out is a writable folder, not an input, and empty of recordings
    unless --overwrite."""
    from ..atomic import check_writable

    if out.exists() and not out.is_dir():
        raise ParityError(f"--out {out}: exists and is not a folder")
    target = out.resolve()
    for given in inputs:
        source = Path(given).resolve()
        if target == source or (source.is_file() and target == source.parent):
            raise ParityError(f"--out {out}: is the --from input {given}; the new recordings would replace the "
                              "ones they are made from (choose another folder)")
    if out.is_dir():
        held = sorted(out.glob("*.npz"))
        if held and not overwrite:
            raise ParityError(f"--out {out}: already holds {len(held)} recording(s) (e.g. {held[0].name}); "
                              "choose an empty folder, or pass --overwrite to replace files of the same name")
    why = check_writable(out / "case.npz", "--out")
    if why:
        raise ParityError(why)


def _rerecord(path: Path) -> Any:
    """The case in ``path`` with its recorded results dropped and where it came from in meta."""
    from ..case import load_case

    case = load_case(path)
    source = {k: case.meta[k] for k in _PROVENANCE if k in case.meta}
    case.output, case.delta, case.stats = None, None, {}
    case.meta = dict(case.meta)
    case.meta["recorded_from"] = {"path": str(path), **source}
    case.meta.setdefault("generator", f"re-recorded from {path}")
    return case


def _unique(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, ... if this run already wrote it."""
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def _tty() -> bool:
    import sys

    return sys.stdout.isatty()
