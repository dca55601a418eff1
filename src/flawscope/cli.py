"""The ``flawscope`` command line. It parses arguments and calls the public API, nothing more."""

from __future__ import annotations

import csv
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Visual anomaly detection for industrial inspection."
)
console = Console()
errors = Console(stderr=True)

DATA_HELP = "An MVTec-layout category (train/good, test/<type>, ground_truth/), a folder with good/ (and optionally defect/ and masks/), or elpv:mono / elpv:poly."


def _parse_params(pairs: list[str]) -> dict[str, Any]:
    params = {}
    for pair in pairs:
        if "=" not in pair:
            raise typer.BadParameter(f"--param takes KEY=VALUE; got {pair!r}.")
        key, value = pair.split("=", 1)
        try:
            params[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            params[key.replace("-", "_")] = value
    return params


def _fail(error: Exception) -> None:
    errors.print(f"[red]error:[/red] {escape(str(error))}")
    raise typer.Exit(code=2)


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


def fit_and_calibrate(
    model_name: str,
    data: str,
    params: dict[str, Any],
    val_fraction: float,
    rule: str,
    k: float,
    target_fpr: float,
    quiet: bool,
):
    """Fit on the training split, calibrate on held-out good images.

    Returns ``(model, fit seconds, training images, calibration images)``.
    """
    import flawscope as fs
    from flawscope.data.datasets import supervised_split, unsupervised_split
    from flawscope.models.base import detector_class

    if detector_class(model_name).supervised:  # learns from labelled images; fit sets the classifier's own threshold
        learn, _ = supervised_split(data, params.get("seed", 0))
        model = fs.create(model_name, **params)
        started = time.perf_counter()
        model.fit(learn, progress=not quiet)
        return model, time.perf_counter() - started, len(learn), 0
    train, validation = unsupervised_split(data, val_fraction, params.get("seed", 0))
    model = fs.create(model_name, **params)
    started = time.perf_counter()
    model.fit(train, progress=not quiet)
    fit_seconds = time.perf_counter() - started
    model.calibrate(validation, rule=rule, k=k, target_fpr=target_fpr, progress=not quiet)
    return model, fit_seconds, len(train), len(validation)


@app.command()
def fit(
    data: str = typer.Option(..., help=DATA_HELP),
    out: Path = typer.Option(..., help="Directory to write the model to (config.json + model.safetensors)."),
    model: str = typer.Option("patchcore", help="Method name; see 'flawscope list-models'."),
    backbone: str | None = typer.Option(None, help="timm backbone (default: the method's, tf_efficientnet_lite0)."),
    weights: str | None = typer.Option(None, help="Backbone weights file, or 'hub' to download (needs network)."),
    recipe: str | None = typer.Option(
        None,
        help="Training schedule of the trained methods (autoencoders, EfficientAD, SimpleNet): fast (default; "
        "minutes on a CPU) or paper (the published schedule; hours on a CPU).",
    ),
    device: str = typer.Option("auto", help="auto (CUDA when present), cpu or cuda."),
    seed: int = typer.Option(0, help="Seed of every random step."),
    param: list[str] = typer.Option([], help="Any other method parameter as KEY=VALUE (JSON values), repeatable."),
    val_fraction: float = typer.Option(
        0.1, help="Fraction of the good training images held out to calibrate the threshold."
    ),
    threshold_rule: str = typer.Option("sigma", help="sigma (mean + k std of good scores), fpr or f1."),
    k: float = typer.Option(3.0, help="k of the sigma rule."),
    target_fpr: float = typer.Option(0.01, help="False-positive rate of the fpr rule."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Learn from good images and calibrate the OK / NOT OK threshold on held-out good ones (cam_classifier: learn
    from 80 % of the labelled good and defective images)."""
    import flawscope as fs

    params = {"device": device, "seed": seed, **_parse_params(param)}
    if backbone is not None:
        params["backbone"] = backbone
    if weights is not None:
        params["weights"] = weights
    if recipe is not None:
        params["recipe"] = recipe
    try:
        detector, seconds, n_train, n_val = fit_and_calibrate(
            model, data, params, val_fraction, threshold_rule, k, target_fpr, quiet
        )
        detector.save(out)
    except fs.FlawscopeError as error:
        _fail(error)
    if detector.supervised:
        console.print(
            f"fitted {model} on {n_train} labelled images (80 % of them, stratified, seed {seed}; a quarter of "
            f"those held out to pick the best epoch) in {seconds:.1f} s; saved to {out}"
        )
    else:
        console.print(
            f"fitted {model} on {n_train} images in {seconds:.1f} s; threshold {detector.threshold_:.4f} "
            f"({threshold_rule} on {n_val} held-out good images); saved to {out}"
        )


def _unique_stem(path_name: str, used: set[str]) -> str:
    stem = Path(path_name).stem or "image"
    candidate, counter = stem, 1
    while candidate in used:
        counter += 1
        candidate = f"{stem}_{counter}"
    used.add(candidate)
    return candidate


@app.command()
def predict(
    model_dir: Path = typer.Argument(..., help="A model directory written by 'flawscope fit'."),
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders of images."),
    out: Path = typer.Option(..., help="Directory for overlays, masks and predictions.csv."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    opening: int | None = typer.Option(
        None,
        help="Size of the element that opens the defect masks (0 = none); default: the method's own "
        "(a 3 px square; a disk of diameter 4 for the autoencoders, as in Bergmann et al.).",
    ),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Score images; write per image a heat-map overlay, a defect mask and a row of predictions.csv."""
    import numpy as np
    from PIL import Image

    import flawscope as fs
    from flawscope.data.datasets import ImageDataset, Sample, list_images
    from flawscope.report import heatmap_overlay

    try:
        detector = fs.load(model_dir, device=device)
        paths = [p for item in inputs for p in (list_images(item) if item.is_dir() else [item])]
        if not paths:
            raise fs.DataError(f"No images found in {', '.join(map(str, inputs))}.")
    except fs.FlawscopeError as error:
        _fail(error)
    out.mkdir(parents=True, exist_ok=True)
    # colour scale: the pixel threshold sits in the middle (green-yellow), red is 1.5x above it
    scale = (0.5 * detector.pixel_threshold_, 1.5 * detector.pixel_threshold_) if detector.is_calibrated else None
    used: set[str] = set()
    failures = 0
    dataset = ImageDataset([Sample(path, str(path)) for path in paths], "inputs")
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "score", "label", "boxes", "overlay", "mask", "error"])
        for result in detector.iter_predict(dataset, on_error="skip", progress=not quiet):
            if result.error is not None:
                failures += 1
                errors.print(f"[yellow]skipped[/yellow] {escape(result.error)}")
                writer.writerow([result.sample.name, "", "", "", "", "", result.error])
                continue
            stem = _unique_stem(result.sample.name, used)
            overlay_path = out / f"{stem}_overlay.png"
            low, high = scale or (float(result.anomaly_map.min()), float(result.anomaly_map.max()))
            Image.fromarray(heatmap_overlay(result.image, result.anomaly_map, vmax=high, vmin=low)).save(overlay_path)
            label, boxes, mask_name = "", "", ""
            if detector.is_calibrated:
                not_ok, mask, found = detector.decide(result.score, result.anomaly_map, opening)
                label = "NOT OK" if not_ok else "OK"
                boxes = json.dumps([[int(v) for v in box[:4]] + [round(box[4], 4)] for box in found])
                mask_name = f"{stem}_mask.png"
                Image.fromarray((mask * 255).astype(np.uint8)).save(out / mask_name)
            writer.writerow([result.sample.name, f"{result.score:.6f}", label, boxes, overlay_path.name, mask_name, ""])
    console.print(f"scored {len(paths) - failures} images ({failures} unreadable) -> {out / 'predictions.csv'}")
    if not detector.is_calibrated:
        errors.print("[yellow]note:[/yellow] the model is not calibrated, so no labels or masks were written.")


@app.command()
def evaluate(
    model_dir: Path = typer.Argument(..., help="A model directory written by 'flawscope fit'."),
    data: str = typer.Option(
        ...,
        help=DATA_HELP + " Its test split is used (for cam_classifier: the 20 % of the "
        "labelled images its fit did not see).",
    ),
    out: Path = typer.Option(..., help="Directory for metrics.json and report.html."),
    device: str | None = typer.Option(None, help="Override the saved device (auto, cpu, cuda)."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Compute image AUROC, AUPR, F1-max, balanced accuracy, confusion matrix and (with masks) pixel AUROC, AUPRO
    and the per-region overlap quantiles at 1-30 % false-positive rate."""
    import flawscope as fs

    try:
        detector = fs.load(model_dir, device=device)
        report = fs.evaluate(detector, test_data(data, detector), progress=not quiet)
    except fs.FlawscopeError as error:
        _fail(error)
    out.mkdir(parents=True, exist_ok=True)
    report.write_json(out / "metrics.json")
    report.write_html(out / "report.html", title=f"{detector.name} on {data}")
    console.print(_metrics_table(report.metrics, f"{detector.name} on {data}"))
    console.print(_per_type_table(report.metrics))
    if "region_overlap" in report.metrics:
        console.print(_overlap_table(report.metrics["region_overlap"]))
    console.print(f"metrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")


def test_data(data: str, detector) -> ImageDataset:
    """The images to evaluate ``detector`` on: the test split, or for a supervised method the 20 %
    of the labelled images its fit did not see (the same seeded split as 'flawscope fit')."""
    from flawscope.data.datasets import open_data, supervised_split

    return supervised_split(data, detector.seed)[1] if detector.supervised else open_data(data, "test")


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def run_benchmark(model: str, data: str, params: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Fit + calibrate + evaluate in this process and return timings, peak memory and metrics."""
    import platform

    import torch

    import flawscope as fs

    detector, fit_seconds, n_train, n_val = fit_and_calibrate(model, data, params, 0.1, "sigma", 3.0, 0.01, quiet)
    test = test_data(data, detector)
    started = time.perf_counter()
    report = fs.evaluate(detector, test, worst_cases=0, progress=not quiet)
    predict_seconds = time.perf_counter() - started
    return {
        "model": model,
        "data": data,
        "params": detector.get_params(),
        "n_train": n_train,
        "n_calibration": n_val,
        "n_test": len(test),
        "fit_seconds": round(fit_seconds, 2),
        "predict_seconds": round(predict_seconds, 2),
        "predict_images_per_second": round(len(test) / predict_seconds, 2),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "metrics": {k: v for k, v in report.metrics.items() if k != "failed"},
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "device": str(detector.device_),
            "flawscope": fs.__version__,
        },
    }


@app.command()
def benchmark(
    data: str = typer.Option("elpv:mono", help=DATA_HELP),
    model: str = typer.Option("patchcore", help="Method name."),
    out: Path | None = typer.Option(None, help="JSON file to write the results to."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    param: list[str] = typer.Option([], help="Method parameter as KEY=VALUE, repeatable."),
    quiet: bool = typer.Option(True, help="No progress bars (they cost time)."),
) -> None:
    """Measure fit seconds, predict images/s, peak RSS and metrics in one process; write JSON."""
    import flawscope as fs

    try:
        result = run_benchmark(model, data, {"device": device, **_parse_params(param)}, quiet)
    except fs.FlawscopeError as error:
        _fail(error)
    text = json.dumps(result, indent=2)
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
    """PatchCore on the ELPV solar cells shipped with flawscope: fit on 200 good cells, calibrate, evaluate."""
    import flawscope as fs
    from flawscope.data.datasets import open_data

    data = f"elpv:{cell_type}"
    console.print(f"PatchCore (tf_efficientnet_lite0, 10 % coreset) on ELPV {cell_type}-crystalline cells")
    try:
        detector, seconds, n_train, n_val = fit_and_calibrate(
            "patchcore", data, {"device": device}, 0.1, "sigma", 3.0, 0.01, False
        )
        detector.save(out / "model")
        report = fs.evaluate(detector, open_data(data, "test"))
    except fs.FlawscopeError as error:
        _fail(error)
    report.write_json(out / "metrics.json")
    report.write_html(out / "report.html", title=f"PatchCore on ELPV {cell_type}")
    console.print(
        f"fit on {n_train} good cells in {seconds:.1f} s; threshold (mean + 3 std of {n_val} held-out good cells) {detector.threshold_:.3f}"
    )
    console.print(_metrics_table(report.metrics, f"held-out ELPV {cell_type} cells: good vs defect probability 1.0"))
    console.print(f"model:   {out / 'model'}\nmetrics: {out / 'metrics.json'}\nreport:  {out / 'report.html'}")


def _image_collection(specs: list[str]) -> ImageDataset:
    """Every image of the given folders (searched recursively) and data specs (``elpv:mono``: its training split)."""
    from flawscope import errors as fs_errors
    from flawscope.data.datasets import GOOD, IMAGE_SUFFIXES, ImageDataset, Sample, open_data

    samples = []
    for spec in specs:
        folder = Path(spec)
        if spec.startswith("elpv:") or (folder / "train").is_dir():
            samples += open_data(spec, "train").samples
            continue
        if not folder.is_dir():
            raise fs_errors.DataError(f"{spec} is neither a folder nor a data spec such as elpv:mono.")
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise fs_errors.DataError(f"No images under {folder}.")
        samples += [Sample(path, str(path), GOOD, "good") for path in paths]
    return ImageDataset(samples, " + ".join(specs))


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
    weights: str | None = typer.Option(
        None, help="Backbone weights file, or 'hub' (default: offline Lite weights)."
    ),
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
    from flawscope.features.pdn import distill_teacher, save_teacher
    from flawscope.models.base import resolve_device

    try:
        collection = _image_collection(images) if images else None
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
    data: str = typer.Option(..., help="The data it was fitted on. " + DATA_HELP),
    out: Path = typer.Option(..., help="Directory to write the int8 model to."),
    val_fraction: float = typer.Option(
        0.1, help="The --val-fraction it was fitted with (its held-out good images recalibrate the threshold)."
    ),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Turn a fitted float32 EfficientAD into int8 (about 3.5x faster on a CPU) without training again; the threshold
    is recalibrated with the rule it had."""
    import flawscope as fs
    from flawscope.data.datasets import unsupervised_split

    try:
        detector = fs.load(model_dir, device="cpu")
        if not hasattr(detector, "quantize"):
            raise fs.ConfigError(
                f"{model_dir} holds a {type(detector).__name__}; only an EfficientAD can be quantized."
            )
        calibration = dict(detector.calibration_)
        train, validation = unsupervised_split(data, val_fraction, detector.seed)
        detector.quantize(train, progress=not quiet)
        if calibration:
            detector.calibrate(
                validation,
                rule=calibration["rule"],
                k=calibration["k"],
                target_fpr=calibration["target_fpr"],
                progress=not quiet,
            )
        detector.save(out)
    except fs.FlawscopeError as error:
        _fail(error)
    threshold = (
        f"threshold {detector.threshold_:.4f} ({calibration['rule']} on {len(validation)} held-out good images)"
        if calibration
        else "not calibrated"
    )
    console.print(f"quantized {model_dir} to int8; {threshold}; saved to {out}")


@app.command("list-models")
def list_models_command() -> None:
    """List the registered methods, each with its one-line summary."""
    import flawscope as fs
    from flawscope.models.base import detector_class

    for name in fs.list_models():
        summary = (detector_class(name).__doc__ or "").strip().splitlines()[0]
        typer.echo(f"{name:20s} {summary}")


if __name__ == "__main__":
    app()
