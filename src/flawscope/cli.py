"""The ``flawscope`` command line. It parses arguments, calls the library (:mod:`flawscope.workflow` and the
public API) and prints; the policy it runs lives in the library."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flawscope.data.io import DEFAULT_MAX_PIXELS, set_max_pixels
from flawscope.data.specs import DATA_SPEC_HELP, GROUPS_HELP

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Visual anomaly detection for industrial inspection."
)
console = Console()
errors = Console(stderr=True)

MAX_PIXELS = typer.Option(
    DEFAULT_MAX_PIXELS,
    min=1,
    help="Refuse larger images (width x height: decompression bombs) from their header, before decoding; they "
    "count as unreadable.",
)


TILE = typer.Option(
    None,
    help="Learn from and score SIZE px square tiles of each image at native resolution (or --tile-scale), blended "
    "back into one map: for images far larger than the model's input. Saved in the model; predict, evaluate, "
    "serve and an export tile as it was fitted.",
)
OVERLAP = typer.Option(0, help="With --tile: pixels by which neighbouring tiles overlap (at most half a tile).")
PRESET = typer.Option(
    None,
    help="A named set of the method's parameters, which --param overrides: patchcore's fast (the inverted-file "
    "search and the OpenVINO backbone: 2.5 to 6 times the images/s, AUROC within 0.002; needs the openvino "
    "extra).",
)
TILE_SCALE = typer.Option(1.0, help="With --tile: resize each image by this factor before cutting it into tiles.")


def _tiling_params(tile: int | None, overlap: int, tile_scale: float) -> dict[str, Any]:
    """The tiling parameters the options give (none without --tile)."""
    return {} if tile is None else {"tile": tile, "overlap": overlap, "tile_scale": tile_scale}


def _preset(model: str, preset: str | None) -> dict[str, Any]:
    """The parameters of ``--preset`` (none without it)."""
    from flawscope.models.registry import preset_params

    return {} if preset is None else preset_params(model, preset)


def _tiling_note(model: Any) -> str:
    """', in 512 px tiles, ...' for a tiled model, '' otherwise."""
    return "" if model.tiling is None else f", in {model.tiling.describe()}"


def _fail(error: Exception) -> NoReturn:
    errors.print(f"[red]error:[/red] {escape(str(error))}")
    raise typer.Exit(code=2)


def _print_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    errors.print(f"[yellow]warning:[/yellow] {escape(str(message))}")


def _show_library_messages(quiet: bool) -> None:
    """Print the library's log messages (training schedules and such) on standard error unless ``quiet``;
    its warnings (a threshold the calibration images cannot support, say) as one plain line each, always."""
    warnings.showwarning = _print_warning
    logger = logging.getLogger("flawscope")
    if not any(getattr(handler, "flawscope_cli", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.flawscope_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _metrics_table(metrics: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in (
        "n_images",
        "n_good",
        "n_defective",
        "image_auroc",
        "image_aupr",
        "f1_max",
        "threshold",
        "balanced_accuracy",
        "balanced_accuracy_oracle",
        "accuracy",
        "pixel_auroc",
        "aupro",
    ):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    table.add_row("confusion [[TN, FP], [FN, TP]]", f"[[{tn}, {fp}], [{fn}, {tp}]]")
    return table


def _per_type_table(metrics: dict[str, Any]) -> Table:
    table = Table(title="per defect type")
    for column in ("type", "images", "image AUROC", "pixel AUROC", "AUPRO"):
        table.add_column(column)
    for name, entry in metrics["per_defect_type"].items():
        table.add_row(
            name,
            *(
                f"{entry[k]:.4f}" if k in entry and isinstance(entry[k], float) else str(entry.get(k, ""))
                for k in ("n_images", "image_auroc", "pixel_auroc", "aupro")
            ),
        )
    return table


def _overlap_table(overlap: dict[str, Any]) -> Table:
    table = Table(
        "overlap quantile",
        *(f"FPR {fpr:.0%}" for fpr in overlap["fpr"]),
        title=f"Per-region overlap ({overlap['n_regions']} defect regions)",
    )
    for quantile, values in zip(overlap["quantiles"], overlap["overlap"]):
        table.add_row(f"{quantile:.0%}", *(f"{value:.3f}" for value in values))
    return table


@app.command()
def fit(
    data: str = typer.Option(..., help=DATA_SPEC_HELP),
    out: Path = typer.Option(..., help="Directory to write the model to (config.json + model.safetensors)."),
    model: str = typer.Option("patchcore", help="Method name; see 'flawscope list-models'."),
    backbone: str | None = typer.Option(None, help="timm backbone (default: the method's, tf_efficientnet_lite0)."),
    weights: str | None = typer.Option(None, help="Backbone weights file, or 'hub' to download (needs network)."),
    preset: str | None = PRESET,
    recipe: str | None = typer.Option(
        None,
        help="Training schedule of the trained methods (autoencoders, EfficientAD, SimpleNet, DFR): fast (default; "
        "minutes on a CPU), long (the longest that fits 60 minutes of a 2-core CPU, at most the paper's) or paper "
        "(the published schedule; hours on a CPU).",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of every random step."),
    param: list[str] = typer.Option([], help="Any other method parameter as KEY=VALUE (JSON values), repeatable."),
    val_fraction: float = typer.Option(
        0.1, help="Fraction of the good training images held out to calibrate the threshold."
    ),
    threshold_rule: str | None = typer.Option(
        None,
        help="fpr (the target-fpr quantile of the good held-out scores), sigma (mean + k std of them) or f1; "
        "default: the method's (fpr at 5 %; ae_mse: sigma, k = 3).",
    ),
    k: float | None = typer.Option(None, help="k of the sigma rule (default 3)."),
    target_fpr: float | None = typer.Option(None, help="False-alarm rate the fpr rule aims at (default 0.05)."),
    groups: str | None = typer.Option(None, help=GROUPS_HELP),
    augment: list[str] = typer.Option(
        [],
        help="Also train on views of each image -- only those valid for the part: hflip, vflip, rot90, rotate=DEG, "
        "brightness=F, contrast=F. Repeatable; for a few good images.",
    ),
    augment_copies: int = typer.Option(4, min=1, help="Augmented views per training image."),
    calibration: str = typer.Option(
        "held-out",
        help="held-out: calibrate on --val-fraction of the good images; out-of-fold: fit on every good image and "
        "calibrate on their out-of-fold scores (for a few good images; at least 2, or 2 --groups).",
    ),
    tile: int | None = TILE,
    overlap: int = OVERLAP,
    tile_scale: float = TILE_SCALE,
    max_pixels: int = MAX_PIXELS,
    quiet: bool = typer.Option(False, help="No progress bars or messages."),
) -> None:
    """Learn from good images and calibrate the OK / NOT OK threshold on held-out good ones (cam_classifier: learn
    from 80 % of the labelled good and defective images)."""
    import flawscope as fs
    from flawscope.models.registry import model_entry
    from flawscope.postprocess import describe_false_alarms
    from flawscope.workflow import fit_and_calibrate, parse_params

    set_max_pixels(max_pixels)
    _show_library_messages(quiet)
    try:
        if calibration not in ("held-out", "out-of-fold"):
            raise fs.ConfigError(f"--calibration is held-out or out-of-fold. Got {calibration!r} instead.")
        params = {"device": device, "seed": seed, **_preset(model, preset), **parse_params(param)}
        named = {"backbone": backbone, "weights": weights, "recipe": recipe}
        params |= {name: value for name, value in named.items() if value is not None}
        params |= _tiling_params(tile, overlap, tile_scale)
        fitted = fit_and_calibrate(
            model,
            data,
            params,
            validation_fraction=val_fraction,
            threshold=model_entry(model).detector.default_threshold.with_changes(threshold_rule, k, target_fpr),
            groups=groups,
            augment=augment,
            augment_copies=augment_copies,
            out_of_fold=calibration == "out-of-fold",
            progress=not quiet,
        )
        fitted.model.save(out)
    except fs.FlawscopeError as error:
        _fail(error)
    n_train, held_out = len(fitted.data.train), fitted.data.calibration
    views = f" (and {augment_copies} augmented views of each)" if augment else ""
    views += _tiling_note(fitted.model)
    if fitted.model.calibration_.get("scores_from", "").startswith("out of fold"):
        console.print(
            f"fitted {model} on {n_train} images{views} in {fitted.fit_seconds:.1f} s; threshold "
            f"{fitted.model.threshold_:.4f} ({fitted.model.calibration_['rule']} on their out-of-fold scores); "
            f"saved to {out}"
        )
        console.print(f"threshold: {describe_false_alarms(fitted.model.calibration_)}")
    elif held_out is None:
        console.print(
            f"fitted {model} on {n_train} labelled images (80 % of them, seeded; a quarter of those held out to "
            f"pick the best epoch) in {fitted.fit_seconds:.1f} s; saved to {out}"
        )
    else:
        console.print(
            f"fitted {model} on {n_train} images{views} in {fitted.fit_seconds:.1f} s; threshold "
            f"{fitted.model.threshold_:.4f} ({fitted.model.calibration_['rule']} on {len(held_out)} held-out good "
            "images); "
            f"saved to {out}"
        )
        console.print(f"threshold: {describe_false_alarms(fitted.model.calibration_)}")


@app.command()
def predict(
    model_dir: Path = typer.Argument(
        ...,
        help="A model directory written by 'flawscope fit', or one written by 'flawscope export' (runs without torch).",
    ),
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    out: Path = typer.Option(..., help="Directory for overlays, masks and predictions.csv."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda); not for an export."),
    graph_format: str | None = typer.Option(
        None, "--format", help="For an exported model: run its 'onnx' or 'openvino' graph (default: as exported)."
    ),
    opening: int | None = typer.Option(
        None,
        help="Size of the element that opens the defect masks (0 = none); default: the method's own "
        "(a 3 px square; a disk of diameter 4 for the autoencoders, as in Bergmann et al.).",
    ),
    max_pixels: int = MAX_PIXELS,
    resume: bool = typer.Option(
        False,
        help="Go on with an interrupted run: images that have a score in OUT/predictions.csv (with --ray: in "
        "OUT/parts/) are not scored again (unreadable ones are tried again).",
    ),
    images: bool = typer.Option(True, help="Write overlays and masks (--no-images: predictions.csv only)."),
    ray: str | None = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Score on a Ray cluster through Ray Data ('local' starts Ray on this machine; 'auto' or "
        "'ray://HOST:PORT' joins a running one); also writes OUT/predictions.parquet. OUT must be shared storage.",
    ),
    workers: int | None = typer.Option(None, min=1, help="With --ray: scoring actors (default: one per CPU)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Score images; write per image a heat-map overlay, a defect mask and a row of predictions.csv."""
    from flawscope.errors import FlawscopeError
    from flawscope.folders import load_scorer, predict_to_folder

    set_max_pixels(max_pixels)
    try:
        if ray is not None:
            _require_extra("predict --ray", ("ray",), extra="ray")
        model = load_scorer(model_dir, device=device, graph_format=graph_format)
        if ray is not None:
            written = _predict_on_ray(model, model_dir, inputs, out, ray, workers, opening, images, resume, quiet)
        else:
            written = predict_to_folder(
                model, inputs, out, opening=opening, progress=not quiet, resume=resume, images=images
            )
    except FlawscopeError as error:
        _fail(error)
    for reason in written.failed.values():
        errors.print(f"[yellow]skipped[/yellow] {escape(reason)}")
    resumed = f", {written.n_resumed} of them in an earlier run" if written.n_resumed else ""
    console.print(
        f"scored {written.n_scored} images{resumed}{_tiling_note(model)} ({len(written.failed)} unreadable) -> "
        f"{written.csv_path}"
    )
    if not model.is_calibrated:
        errors.print("[yellow]note:[/yellow] the model is not calibrated, so no labels or masks were written.")


def _predict_on_ray(
    model: Any,
    model_dir: Path,
    inputs: list[Path],
    out: Path,
    address: str,
    workers: int | None,
    opening: int | None,
    images: bool,
    resume: bool,
    quiet: bool,
) -> Any:
    """``predict --ray``: what the run wrote (``model``, loaded from ``model_dir`` already, is not loaded again)."""
    from flawscope.fleet import predict_on_ray

    return predict_on_ray(
        model_dir,
        inputs,
        out,
        address=None if address == "local" else address,
        workers=workers,
        opening=opening,
        images=images,
        resume=resume,
        progress=not quiet,
        model=model,
    )


@app.command()
def export(
    model_dir: Path = typer.Argument(..., help="A model directory written by 'flawscope fit'."),
    out: Path = typer.Option(..., help="Directory for the graph and metadata.json."),
    graph_format: str = typer.Option(
        "onnx", "--format", help="onnx, or openvino (writes OpenVINO's IR beside the ONNX graph)."
    ),
    check: list[Path] = typer.Option(
        [],
        help="Image files or folders: score them with the model and with its export, and fail unless scores agree "
        "within 1e-4 (relative), maps within 1e-3 (an int8 EfficientAD: 6 %, 0.02) and labels exactly (written to "
        "parity.json). Repeatable.",
    ),
) -> None:
    """Export a fitted model to ONNX or OpenVINO for the torch-free runtime ('flawscope predict EXPORTED_DIR')."""
    import flawscope as fs
    from flawscope.export import check_parity, export_detector
    from flawscope.folders import image_paths
    from flawscope.runtime import read_metadata

    try:
        detector = fs.load(model_dir, device="cpu")
        export_detector(detector, out, graph_format)
        images = image_paths(check)
        formats = read_metadata(out)["graph"]["formats"] if images else []  # an OpenVINO export holds ONNX too
        checks = [check_parity(detector, out, images, name) for name in formats]
    except fs.FlawscopeError as error:
        _fail(error)
    console.print(f"exported {detector.name} -> {out}")
    if not checks:
        return
    (out / "parity.json").write_text(json.dumps(checks, indent=2))
    for parity in checks:
        verdict = "[green]passed[/green]" if parity["passed"] else "[red]FAILED[/red]"
        console.print(
            f"parity {parity['graph_format']} on {parity['n_images']} images: {verdict} (scores within "
            f"{parity['max_score_relative_error']:.1e} relative, maps within {parity['max_map_error']:.1e}, "
            f"{parity['labels_differing']} labels differ)"
        )
    if not all(parity["passed"] for parity in checks):
        raise typer.Exit(code=1)


def _new_version_dir(model_dir: Path, out: Path) -> Path:
    """``out``, unless it is ``model_dir`` itself: a new version never overwrites the one it came from."""
    from flawscope.errors import ConfigError

    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out is {model_dir} itself; give a new directory, the model it came from is kept.")
    return out


@app.command()
def update(
    model_dir: Path = typer.Argument(..., help="A model directory written by 'flawscope fit' (patchcore or padim)."),
    good: list[Path] = typer.Option(..., help="Good images to learn: image files or folders. Repeatable."),
    out: Path = typer.Option(..., help="Directory for the new model version (the one in MODEL_DIR is kept)."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    max_pixels: int = MAX_PIXELS,
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Teach a fitted model more good images without fitting it again (PatchCore, PaDiM) and save the new version.

    The threshold stays the one calibrated before; 'flawscope recalibrate' sets it again from verdicts.
    """
    import flawscope as fs
    from flawscope.folders import image_paths

    set_max_pixels(max_pixels)
    _show_library_messages(quiet)
    try:
        out = _new_version_dir(model_dir, out)
        detector = fs.load(model_dir, device=device)
        updated = detector.update(image_paths(good), progress=not quiet)
        updated.save(out)
    except fs.FlawscopeError as error:
        _fail(error)
    change = updated.lineage_[-1]
    details = ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in change.items() if key.startswith("bank"))
    console.print(
        f"updated {updated.name} {detector.version_} -> {updated.version_} with {change['images']} good images in "
        f"{change['seconds']:.2f} s{f' ({details})' if details else ''}; saved to {out}"
    )
    if updated.is_calibrated:
        console.print(f"threshold unchanged: {updated.threshold_:.4f} ('flawscope recalibrate' sets a new one)")


@app.command()
def recalibrate(
    model_dir: Path = typer.Argument(..., help="A model directory written by 'flawscope fit' or 'flawscope update'."),
    good: list[Path] = typer.Option(..., help="Images confirmed good: image files or folders. Repeatable."),
    defective: list[Path] = typer.Option([], help="Images confirmed defective (then the best-F1 rule). Repeatable."),
    out: Path = typer.Option(..., help="Directory for the recalibrated model (the one in MODEL_DIR is kept)."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    max_pixels: int = MAX_PIXELS,
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Set the OK / NOT OK threshold again from operator verdicts: the saved rule on the confirmed good images, or
    the best-F1 rule when confirmed defective images are given too."""
    import flawscope as fs
    from flawscope.folders import image_paths
    from flawscope.postprocess import describe_false_alarms

    set_max_pixels(max_pixels)
    _show_library_messages(quiet)
    try:
        out = _new_version_dir(model_dir, out)
        detector = fs.load(model_dir, device=device)
        before = detector.threshold_
        detector.recalibrate(image_paths(good), image_paths(defective), progress=not quiet)
        detector.save(out)
    except fs.FlawscopeError as error:
        _fail(error)
    calibration = detector.calibration_
    was = "none" if before is None else f"{before:.4f}"
    console.print(
        f"threshold {was} -> {detector.threshold_:.4f} ({calibration['rule']} on {calibration['n_images']} images, "
        f"{calibration['n_defective']} of them defective); saved to {out}"
    )
    console.print(f"threshold: {describe_false_alarms(calibration)}")


def _print_report(report: Any, title: str) -> None:
    console.print(_metrics_table(report.metrics, title))
    console.print(_per_type_table(report.metrics))
    if "region_overlap" in report.metrics:
        console.print(_overlap_table(report.metrics["region_overlap"]))
    for note in report.metrics.get("notes", []):
        errors.print(f"[yellow]note:[/yellow] {escape(note)}")


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="A model directory written by 'flawscope fit'."),
    data: str = typer.Option(
        ...,
        help=DATA_SPEC_HELP + " Its test split is used (for cam_classifier: the 20 % of the "
        "labelled images its fit did not see).",
    ),
    out: Path = typer.Option(..., help="Directory for metrics.json and report.html."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    groups: str | None = typer.Option(None, help="The --groups the model was fitted with. " + GROUPS_HELP),
    max_pixels: int = MAX_PIXELS,
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Compute image AUROC, AUPR, F1-max, balanced accuracy, confusion matrix and (with masks) pixel AUROC, AUPRO
    and the per-region overlap quantiles at 1-30 % false-positive rate."""
    import flawscope as fs
    from flawscope.workflow import evaluation_data

    set_max_pixels(max_pixels)
    try:
        detector = fs.load(model_dir, device=device)
        test = evaluation_data(data, supervised=detector.supervised, seed=detector.seed, groups=groups)
        report = fs.evaluate(detector, test, progress=not quiet)
    except fs.FlawscopeError as error:
        _fail(error)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "metrics.json")
    report.write_html(out / "report.html", title=f"{detector.name} on {data}")
    _print_report(report, f"{detector.name} on {data}{_tiling_note(detector)}")
    console.print(f"metrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")


@app.command()
def benchmark(
    data: str = typer.Option("elpv:mono", help=DATA_SPEC_HELP),
    model: str = typer.Option("patchcore", help="Method name."),
    out: Path | None = typer.Option(None, help="JSON file to write the results to."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    param: list[str] = typer.Option([], help="Method parameter as KEY=VALUE, repeatable."),
    preset: str | None = PRESET,
    groups: str | None = typer.Option(None, help=GROUPS_HELP),
    tile: int | None = TILE,
    overlap: int = OVERLAP,
    tile_scale: float = TILE_SCALE,
    quiet: bool = typer.Option(True, help="No progress bars (they cost time)."),
) -> None:
    """Measure fit seconds, predict images/s, peak RSS and metrics in one process; write JSON."""
    import flawscope as fs
    from flawscope.workflow import parse_params, run_benchmark

    _show_library_messages(quiet)
    try:
        params = {"device": device, **_preset(model, preset), **parse_params(param)}
        params |= _tiling_params(tile, overlap, tile_scale)
        result = run_benchmark(model, data, params, groups=groups, progress=not quiet)
    except fs.FlawscopeError as error:
        _fail(error)
    text = json.dumps(result.to_json(), indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    console.print(text)


@app.command()
def demo(
    cell_type: str = typer.Option("mono", help="ELPV cells: mono, poly or all."),
    out: Path = typer.Option(Path("runs/demo"), help="Where the model, metrics.json and report.html go."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
) -> None:
    """PatchCore on the ELPV solar cells: fit on 200 good cells, calibrate on 50 of other modules, evaluate on
    modules never seen."""
    import flawscope as fs
    from flawscope.postprocess import describe_false_alarms
    from flawscope.workflow import evaluation_data, fit_and_calibrate

    data = f"elpv:{cell_type}"
    console.print(f"PatchCore (tf_efficientnet_lite0, 10 % coreset) on ELPV {cell_type}-crystalline cells")
    _show_library_messages(False)
    try:
        fitted = fit_and_calibrate("patchcore", data, {"device": device})
        fitted.model.save(out / "model")
        report = fs.evaluate(fitted.model, evaluation_data(data, supervised=False))
    except fs.FlawscopeError as error:
        _fail(error)
    report.write_json(out / "metrics.json")
    report.write_html(out / "report.html", title=f"PatchCore on ELPV {cell_type}")
    n_calibration = len(fitted.data.calibration or [])
    console.print(
        f"fit on {len(fitted.data.train)} good cells in {fitted.fit_seconds:.1f} s; threshold (from "
        f"{n_calibration} good cells of other modules) {fitted.model.threshold_:.3f}: "
        f"{describe_false_alarms(fitted.model.calibration_)}"
    )
    title = f"ELPV {cell_type} cells of modules never seen: good vs defect probability 1.0"
    console.print(_metrics_table(report.metrics, title))
    console.print(f"model:   {out / 'model'}\nmetrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")


@app.command("distill-teacher")
def distill_teacher_command(
    out: Path = typer.Option(..., help="The teacher file to write (.safetensors); give it to a model as teacher=PATH."),
    images: list[str] = typer.Option(
        [],
        help="Folder of images (searched recursively) or data spec (elpv:mono: its training images), repeatable. "
        "None: seeded dead-leaves images, as for the teacher shipped with flawscope.",
    ),
    dead_leaves_share: float | None = typer.Option(
        None, help="Share of dead-leaves images among the given ones (default: 0 with --images, 1 without)."
    ),
    size: str = typer.Option("small", help="PDN size: small (EfficientAD-S) or medium (EfficientAD-M)."),
    backbone: str = typer.Option("tf_efficientnet_lite0", help="timm backbone whose features the teacher learns."),
    layers: str = typer.Option("2,3", help="Backbone stages (timm out_indices), comma-separated."),
    weights: str | None = typer.Option(None, help="Backbone weights file, or 'hub' (default: offline Lite weights)."),
    image_size: int = typer.Option(256, help="Side of the distillation images (a multiple of 4, >= 128)."),
    steps: int = typer.Option(1000, help="Optimiser steps (paper: 60,000 of 16 ImageNet images)."),
    batch_size: int = typer.Option(8, help="Images per step."),
    learning_rate: float = typer.Option(1e-3, help="Adam learning rate (paper: 1e-4 over its 60x longer schedule)."),
    precision: str = typer.Option(
        "float32", help="float32 or bfloat16 (autocast; about 2.5x faster on AVX512-BF16 CPUs)."
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of the images, crops and initial weights."),
    quiet: bool = typer.Option(False, help="No progress bar."),
) -> None:
    """Distil an EfficientAD teacher (a PDN) from a pretrained backbone on any images."""
    import flawscope as fs
    from flawscope.devices import resolve_device
    from flawscope.models.efficientad.pdn import distill_teacher, save_teacher
    from flawscope.workflow import image_collection

    _show_library_messages(quiet)
    try:
        collection = image_collection(images) if images else None
        started = time.perf_counter()
        teacher = distill_teacher(
            images=collection,
            dead_leaves_share=dead_leaves_share,
            size=size,
            backbone=backbone,
            layers=tuple(int(x) for x in layers.split(",")),
            weights=weights,
            image_size=image_size,
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            precision=precision,
            seed=seed,
            device=resolve_device(device),
            progress=not quiet,
        )
        save_teacher(teacher, out)
    except (fs.FlawscopeError, ValueError) as error:
        _fail(error)
    console.print(
        f"distilled a PDN-{size} teacher ({teacher.info.out_channels} channels) from {backbone} in "
        f"{time.perf_counter() - started:.0f} s; final loss {teacher.info.final_loss:.4f}; saved to {out}"
    )


@app.command()
def quantize(
    model_dir: Path = typer.Argument(..., help="A float32 EfficientAD written by 'flawscope fit'."),
    data: str = typer.Option(..., help="The data it was fitted on. " + DATA_SPEC_HELP),
    out: Path = typer.Option(..., help="Directory to write the int8 model to."),
    val_fraction: float = typer.Option(
        0.1, help="The --val-fraction it was fitted with (its held-out good images recalibrate the threshold)."
    ),
    groups: str | None = typer.Option(None, help="The --groups it was fitted with. " + GROUPS_HELP),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Turn a fitted float32 model into int8 (EfficientAD: about 3.5x faster on a CPU) without training again; the
    threshold is recalibrated with the rule it had."""
    import flawscope as fs
    from flawscope.models.registry import QUANTIZABLE, list_models
    from flawscope.workflow import training_data

    _show_library_messages(quiet)
    try:
        detector = fs.load(model_dir, device="cpu")
        if QUANTIZABLE not in detector.capabilities:
            raise fs.ConfigError(
                f"{model_dir} holds a {detector.name}; only {', '.join(list_models(capability=QUANTIZABLE))} "
                "can be quantized."
            )
        data_used = training_data(
            data, supervised=False, validation_fraction=val_fraction, seed=detector.seed, groups=groups
        )
        quantized = detector.quantize(data_used.train, progress=not quiet)  # type: ignore[attr-defined]
        rule = detector.calibration_
        if rule and data_used.calibration is not None:
            quantized.calibrate(
                data_used.calibration,
                rule=rule["rule"],
                k=rule["k"],
                target_fpr=rule["target_fpr"],
                progress=not quiet,
            )
        quantized.save(out)
    except fs.FlawscopeError as error:
        _fail(error)
    threshold = (
        f"threshold {quantized.threshold_:.4f} ({rule['rule']} on {len(data_used.calibration or [])} held-out good "
        "images)"
        if quantized.is_calibrated
        else "not calibrated"
    )
    console.print(f"quantized {model_dir} to int8; {threshold}; saved to {out}")


def _require_extra(command: str, modules: tuple[str, ...], extra: str = "serve") -> None:
    """Fail with the install line, before any model is loaded, when an extra (default 'serve') is missing."""
    from importlib.util import find_spec

    missing = [module for module in modules if find_spec(module) is None]
    if missing:
        _fail(
            ImportError(
                f"flawscope {command} needs the '{extra}' extra (missing: {', '.join(missing)}): "
                f"pip install 'flawscope[{extra}]'"
            )
        )


def _station(
    model_dirs: list[Path],
    db: Path,
    store: Path | None,
    store_images: bool,
    max_pixels: int,
    device: str | None,
    max_batch: int = 8,
    resume: bool = True,
) -> Any:
    import flawscope as fs
    from flawscope.service import open_station

    try:
        station = open_station(
            model_dirs,
            db,
            store,
            store_images=store_images,
            max_pixels=max_pixels,
            device=device,
            max_batch=max_batch,
            resume=resume,
        )
    except (fs.FlawscopeError, OSError) as error:
        _fail(error)
    for name, (given, served) in station.resumed.items():
        console.print(f"{name}: serving version {served}, taught from the given {given} (--no-resume: the given one)")
    return station


_DB_HELP = "The inspection log (SQLite; created and migrated when needed)."
_STORE_HELP = "Folder of the stored images, overlays and masks (content-addressed); default: <db>-store beside the db."


@app.command()
def serve(
    model_dirs: list[Path] = typer.Argument(
        ..., help="Calibrated model directories; each served under its folder name."
    ),
    host: str = typer.Option("127.0.0.1", help="Address to bind; the default answers this machine only."),
    port: int = typer.Option(8000, help="TCP port."),
    db: Path = typer.Option(Path("inspections.sqlite"), help=_DB_HELP),
    store: Path | None = typer.Option(None, help=_STORE_HELP),
    store_images: bool = typer.Option(
        True, help="Keep every image, overlay and mask (--no-store-images: the log only)."
    ),
    token: str | None = typer.Option(
        None, envvar="FLAWSCOPE_TOKEN", help="Every write route then needs 'Authorization: Bearer TOKEN'."
    ),
    max_upload_mb: float = typer.Option(32.0, help="Larger uploads are refused with 413."),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, help="Larger images (decompression bombs) are refused with 422."
    ),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    max_batch: int = typer.Option(8, min=1, help="Images waiting for a model are scored together, up to this many."),
    resume: bool = typer.Option(
        True,
        help="Serve a model as an earlier run on this --db taught it (new versions are saved in <db>-models beside "
        "the db); --no-resume: as given.",
    ),
) -> None:
    """Serve the models over HTTP: POST /v1/inspect, the inspection log, the review page at /, API docs at /docs.

    Operators teach a PatchCore or PaDiM model from the review page: 'False alarm - teach as good' queues the image,
    'Update model' makes and serves a new version, 'Recalibrate' sets the threshold from the verdicts in the log,
    'Roll back' serves the previous version."""
    _require_extra("serve", ("fastapi", "uvicorn", "multipart", "prometheus_client"))
    station = _station(model_dirs, db, store, store_images, max_pixels, device, max_batch, resume)
    import uvicorn

    from flawscope.service.app import create_app

    api = create_app(station, token=token, max_upload_bytes=int(max_upload_mb * 1024 * 1024))
    served = [
        name if model.detector.tiling is None else f"{name} ({model.detector.tiling.describe()})"
        for name, model in station.models.items()
    ]
    console.print(f"serving {', '.join(served)} on http://{host}:{port}/ (log: {db})")
    if host not in ("127.0.0.1", "localhost", "::1") and token is None:
        errors.print("[yellow]warning:[/yellow] reachable from other machines and no --token: anyone can write.")
    uvicorn.run(api, host=host, port=port, log_level="warning")


@app.command()
def watch(
    model_dir: Path = typer.Argument(..., help="A calibrated model directory."),
    in_dir: Path = typer.Argument(..., help="The folder a camera writes images into (its top level is watched)."),
    db: Path = typer.Option(Path("inspections.sqlite"), help=_DB_HELP),
    store: Path | None = typer.Option(None, help=_STORE_HELP),
    store_images: bool = typer.Option(
        True, help="Keep every image, overlay and mask (--no-store-images: the log only)."
    ),
    sort: bool = typer.Option(False, help="Move each inspected file into ok/, not_ok/ or failed/ beside it."),
    settle: float = typer.Option(0.5, help="Seconds a file's size must stay unchanged before it counts as complete."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, help="Larger images are logged as failed."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    quiet: bool = typer.Option(False, help="No line per inspected file."),
) -> None:
    """Inspect every image written into IN_DIR once, when complete; log it to the same database as serve."""
    _show_library_messages(quiet)
    _require_extra("watch", ("watchfiles",))
    station = _station([model_dir], db, store, store_images, max_pixels, device)
    from flawscope.service.watch import FolderWatcher

    try:
        watcher = FolderWatcher(station, in_dir, sort=sort, settle_seconds=settle)
    except NotADirectoryError as error:
        _fail(error)
    console.print(f"watching {in_dir} with {watcher.model} (log: {db}); Ctrl+C stops")
    try:
        watcher.run()
    except KeyboardInterrupt:
        console.print("stopped")


log_app = typer.Typer(no_args_is_help=True, help="The inspection log of serve and watch: export it, summarise it.")
app.add_typer(log_app, name="log")


def _open_log(db: Path) -> Any:
    from flawscope.errors import ModelFileError
    from flawscope.service.log import InspectionLog

    if not db.is_file():
        _fail(FileNotFoundError(f"No inspection log at {db}."))
    try:
        return InspectionLog(db)
    except ModelFileError as error:
        _fail(error)


@log_app.command("export")
def log_export(
    db: Path = typer.Option(..., help="The inspection log."),
    out: Path = typer.Option(..., help="FILE.csv, or FILE.parquet where pyarrow is installed."),
) -> None:
    """Write every inspection with its latest verdict to a CSV or Parquet file."""
    import flawscope as fs

    log = _open_log(db)
    try:
        log.export(out)
    except fs.FlawscopeError as error:
        _fail(error)
    console.print(f"{log.count()} inspections -> {out}")


@log_app.command("stats")
def log_stats_command(
    db: Path = typer.Option(..., help="The inspection log."),
    model: str | None = typer.Option(None, help="One model's figures only."),
) -> None:
    """The figures of GET /v1/stats as tables: counts, NOT OK rate, verdict agreement, drift."""
    from flawscope.service.stats import log_stats

    figures = log_stats(_open_log(db), model)
    for name, entry in figures["models"].items():
        table = Table(title=f"model {name}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key in ("inspections", "failed", "ok", "not_ok", "not_ok_rate", "threshold"):
            table.add_row(key, _format_figure(entry[key]))
        for key, value in entry["verdicts"].items():
            table.add_row(f"verdicts: {key}", str(value))
        for key, value in entry["drift"].items():
            table.add_row(f"drift: {key}", _format_figure(value))
        console.print(table)


def _format_figure(value: Any) -> str:
    if value is None:
        return "--"
    return f"{value:.4g}" if isinstance(value, float) else escape(str(value))


@app.command("list-models")
def list_models_command() -> None:
    """List the registered methods, each with its one-line summary and capabilities."""
    from flawscope.models.registry import list_models, model_entry

    for name in list_models():
        entry = model_entry(name)
        capabilities = f" [{', '.join(sorted(entry.capabilities))}]" if entry.capabilities else ""
        typer.echo(f"{name:20s} {entry.summary}{capabilities}")


if __name__ == "__main__":
    app()
