"""The functions agent code may call. Each one checks its inputs and returns a typed value.

Volume work is done by `voxel_ops` (all geometry through the affine); vision work goes through the
`VisionClient`. Arguments have already been bound and type-checked by the registry; what remains
here are checks of meaning (e.g. a scan that was not encoded). Failures raise `SandboxRuntimeError`
or a library `ValueError`, which the interpreter turns into feedback text.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

import voxel_ops as vo
from agent.functions.capabilities import capability_text
from agent.functions.context import CallContext, StopSignal
from agent.functions.registry import ArgType, LibraryFunction, Param, Registry
from agent.functions.types import Encoding, ImageValue, Mask, Quantity, Record, Scan, asymmetry_meaning
from agent.phi_bank import normalize_target
from agent.sandbox.errors import SandboxRuntimeError
from agent.sandbox.formatting import describe, format_value
from agent.sandbox.outcome import Feedback
from api_schemas import OutputVolume
from voxel_ops import Volume

IMAGE = ArgType("scan", (ImageValue,), phrase="a scan or mask")
MASK = ArgType("mask", (Mask,), phrase="a mask")
ENCODING = ArgType("encoding", (Encoding,), phrase="an encoding")
TEXT = ArgType("str", (str,), phrase="text")
NUMBER = ArgType("number", (int, float), exclude=(bool,), phrase="a number")
AMOUNT = ArgType("quantity", (Quantity, int, float), exclude=(bool,), phrase="a quantity or number")
MESSAGE = ArgType("str", (str, Quantity, int, float), phrase="text, a quantity or a number")
ANY = ArgType("any", (object,), phrase="any value")

MAX_MORPHOLOGY_MM = 50.0
MAX_MARGIN_MM = 100.0
SIGNAL_CONTRAST = 0.15  # |mean difference| / reference mean above which signal is hyper/hypo
# |volume change| in percent up to which a lesion is called stable: two segmentations of one lesion
# on different grids differ by several percent, so a smaller change is not read as growth
STABLE_PERCENT = 20.0
OUTPUT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}")  # used with fullmatch


# ---------------------------------------------------------------- helpers

def _intensity_unit(image: ImageValue) -> str | None:
    return "HU" if (image.volume.meta.modality or "").upper() == "CT" else None


def _derive(like: ImageValue, volume: Volume, name: str) -> ImageValue:
    """A new value of the same kind as `like` (a mask stays a mask), remembering its source scan."""
    if isinstance(like, Mask):
        return Mask(volume, name, like.source)
    return Scan(volume, name, like.source)


def _mask_on_grid(mask: Mask, image: ImageValue) -> Volume:
    """Masks of another grid (another sequence of the study) are resampled, nearest neighbour."""
    if mask.volume.same_grid(image.volume):
        return mask.volume
    moved = vo.resample_like(mask.volume, image.volume, order=0)
    return moved.with_array((moved.array > 0.5).astype(np.uint8))


def _amount(value: Quantity | int | float) -> tuple[float, str | None]:
    if isinstance(value, Quantity):
        return float(value.value), value.unit
    return float(value), None


def _same_unit(fn: str, a: Quantity | int | float, b: Quantity | int | float) -> tuple[float, float, str | None]:
    va, ua = _amount(a)
    vb, ub = _amount(b)
    if ua != ub and ua is not None and ub is not None:
        raise SandboxRuntimeError(f"{fn}(): units differ ({ua} vs {ub})")
    return va, vb, ua or ub


def _label(value: Quantity | int | float) -> str:
    return value.name if isinstance(value, Quantity) else format_value(value)


# ---------------------------------------------------------------- vision

def encode(ctx: CallContext, *scans: ImageValue) -> Encoding:
    if len(scans) > ctx.limits.max_streams:
        raise SandboxRuntimeError(f"encode(): at most {ctx.limits.max_streams} volumes at once, got {len(scans)}")
    phis = [ctx.take_phi((i,), lambda s=s: ctx.phi_bank.encode_phi(s.volume.meta.modality))
            for i, s in enumerate(scans)]
    ctx.checkpoint()  # safe points around the long parts: cancel and the call's deadline (worker threads)
    handle = ctx.client.encode([s.volume for s in scans], phis, ctx.job_id)
    ctx.checkpoint()
    return Encoding(handle, tuple(scans))


def generate(ctx: CallContext, enc: Encoding, scan: ImageValue, target: str) -> Mask:
    stream = enc.stream_of(scan)
    if stream is None:
        raise SandboxRuntimeError(f"generate(): '{scan.name}' is not in this encoding; "
                                  f"encode it first (encoded: {', '.join(s.name for s in enc.scans)})")
    if not ctx.phi_bank.supports(target):
        raise SandboxRuntimeError(f"generate(): unsupported target {target!r}; supported targets: "
                                  f"{', '.join(ctx.phi_bank.targets)}")
    phi = ctx.take_phi((1, "scan"), lambda: ctx.phi_bank.generate_phi(target))
    ctx.checkpoint()
    probabilities = ctx.client.generate(enc.handle, stream, phi)
    ctx.checkpoint()
    if probabilities.shape != scan.volume.shape:
        raise SandboxRuntimeError("generate(): the vision service returned a volume on the wrong grid")
    mask = Mask(scan.volume.with_array((np.asarray(probabilities.array) >= 0.5).astype(np.uint8)),
                normalize_target(target), scan.source or scan.name)
    mask.probabilities = np.asarray(probabilities.array, dtype=np.float32)
    return mask


# ---------------------------------------------------------------- agent and user interaction

def read(ctx: CallContext, x: Any) -> None:
    ctx.record(x)
    if isinstance(x, Encoding):
        ctx.outcome.feedback.append(Feedback(vectors=np.asarray(x.handle.vectors, dtype=np.float32)))
        return None
    text = describe(x)
    if len(text) > ctx.limits.max_str_len:
        text = text[: ctx.limits.max_str_len] + " ..."
    ctx.outcome.feedback.append(Feedback(text=text))
    return None


def capabilities(ctx: CallContext) -> str:
    return capability_text(ctx.phi_bank)


def respond(ctx: CallContext, text: str | Quantity | int | float) -> None:
    ctx.record(text)
    message = text if isinstance(text, str) else format_value(text)
    ctx.response_chars += len(message)
    if ctx.response_chars > ctx.limits.max_response_chars:
        raise SandboxRuntimeError(f"respond(): responses exceed {ctx.limits.max_response_chars} characters")
    ctx.outcome.responses.append(message)
    return None


def output_file_stem(name: str) -> str:
    """The file name (without .nii.gz) an output is saved under."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") or "output"


def output(ctx: CallContext, volume: ImageValue, name: str) -> None:
    if not isinstance(name, str) or not OUTPUT_NAME.fullmatch(name):  # fullmatch: '$' lets "nl\n" through
        raise SandboxRuntimeError("output(): name must be 1-64 letters, digits, spaces, '_', '-' or '.'")
    if name in ctx.output_volumes:
        raise SandboxRuntimeError(f"output(): an output named {name!r} already exists")
    safe = output_file_stem(name)
    for other in ctx.output_volumes:  # "a b" and "a_b" would both be a_b.nii.gz: one would overwrite the other
        if output_file_stem(other).lower() == safe.lower():
            raise SandboxRuntimeError(f"output(): {name!r} would be saved under the same file name as the "
                                      f"output {other!r}; choose a more distinct name")
    if len(ctx.output_volumes) >= ctx.limits.max_outputs:
        raise SandboxRuntimeError(f"output(): at most {ctx.limits.max_outputs} outputs per analysis")
    path: Path | None = None
    if ctx.output_dir is not None:
        path = vo.save_volume(volume.volume, Path(ctx.output_dir) / f"{safe}.nii.gz")
    ctx.output_volumes[name] = volume.volume
    ctx.outcome.outputs.append(OutputVolume(name=name, path=str(path) if path else None, kind=
                                            "mask" if isinstance(volume, Mask) else "image",
                                            step=ctx.step, source=volume.source))
    return None


def stop(ctx: CallContext) -> None:
    ctx.outcome.stopped = True
    raise StopSignal()


# ---------------------------------------------------------------- measurements

def volume(ctx: CallContext, mask: Mask) -> Quantity:
    # "intracranial volume" is already a volume: no "intracranial volume volume" metric
    name = mask.name if mask.name.endswith(" volume") else f"{mask.name} volume"
    return Quantity(float(vo.volume_ml(mask.volume)), "mL", name)


_EXTENT_AXES = (("left_right", "left-right extent"), ("anterior_posterior", "anterior-posterior extent"),
                ("superior_inferior", "superior-inferior extent"))


def extents(ctx: CallContext, mask: Mask) -> Record:
    values = vo.extents_mm(mask.volume)
    return Record(f"{mask.name} extents", tuple(
        (key, Quantity(float(values[key]), "mm", f"{mask.name} {label}")) for key, label in _EXTENT_AXES))


def _one_extent(mask: Mask, key: str, label: str) -> Quantity:
    return Quantity(float(vo.extents_mm(mask.volume)[key]), "mm", f"{mask.name} {label}")


def height(ctx: CallContext, mask: Mask) -> Quantity:
    return _one_extent(mask, "superior_inferior", "height")


def width(ctx: CallContext, mask: Mask) -> Quantity:
    return _one_extent(mask, "left_right", "width")


def depth(ctx: CallContext, mask: Mask) -> Quantity:
    return _one_extent(mask, "anterior_posterior", "depth")


def bbox(ctx: CallContext, mask: Mask) -> Record:
    low, high = vo.bounding_box_mm(mask.volume)
    fields = [(f"min_{a}", Quantity(float(v), "mm", f"{mask.name} bounding box min {a}")) for a, v in zip("xyz", low)]
    fields += [(f"max_{a}", Quantity(float(v), "mm", f"{mask.name} bounding box max {a}")) for a, v in zip("xyz", high)]
    return Record(f"{mask.name} bounding box", tuple(fields))


def centroid(ctx: CallContext, mask: Mask) -> Record:
    point = vo.centroid_mm(mask.volume)
    return Record(f"{mask.name} centroid", tuple(
        (a, Quantity(float(v), "mm", f"{mask.name} centroid {a}")) for a, v in zip("xyz", point)))


def _stats(scan: ImageValue, mask: Mask) -> dict[str, float]:
    return vo.intensity_stats(scan.volume, _mask_on_grid(mask, scan))


def mean_intensity(ctx: CallContext, scan: ImageValue, mask: Mask) -> Quantity:
    return Quantity(float(_stats(scan, mask)["mean"]), _intensity_unit(scan),
                    f"{mask.name} mean intensity in {scan.name}")


def intensity_stats(ctx: CallContext, scan: ImageValue, mask: Mask) -> Record:
    stats = _stats(scan, mask)
    unit = _intensity_unit(scan)
    return Record(f"{mask.name} intensity in {scan.name}", tuple(
        (k, Quantity(float(stats[k]), unit, f"{mask.name} {k} intensity in {scan.name}"))
        for k in ("mean", "median", "std", "min", "max")))


def snr(ctx: CallContext, scan: ImageValue, mask: Mask) -> Quantity:
    return Quantity(float(vo.snr(scan.volume, _mask_on_grid(mask, scan))), None, f"{mask.name} SNR in {scan.name}")


def ratio(ctx: CallContext, a: Quantity | int | float, b: Quantity | int | float) -> Quantity:
    va, vb, _ = _same_unit("ratio", a, b)
    return Quantity(float(vo.ratio(va, vb)), None, f"ratio of {_label(a)} to {_label(b)}")


def difference(ctx: CallContext, a: Quantity | int | float, b: Quantity | int | float) -> Quantity:
    va, vb, unit = _same_unit("difference", a, b)
    return Quantity(va - vb, unit, f"difference of {_label(a)} and {_label(b)}")


def change(ctx: CallContext, before: Quantity | int | float, after: Quantity | int | float) -> Record:
    vb, va, unit = _same_unit("change", before, after)
    result = vo.change(vb, va)
    name = f"change from {_label(before)} to {_label(after)}"
    percent = None if result["percent"] is None else Quantity(float(result["percent"]), "%", f"{name} (percent)")
    return Record(name, (("absolute", Quantity(float(result["absolute"]), unit, f"{name} (absolute)")),
                         ("percent", percent)))


def percent_change(ctx: CallContext, before: Quantity | int | float, after: Quantity | int | float) -> Quantity:
    vb, va, _ = _same_unit("percent_change", before, after)
    percent = vo.change(vb, va)["percent"]
    if percent is None:
        raise SandboxRuntimeError("percent_change(): undefined when the value before is 0")
    return Quantity(float(percent), "%", f"percent change from {_label(before)} to {_label(after)}")


def trend_word(percent: float) -> str:
    """'has grown', 'has shrunk' or 'is stable' for a percent change (the one rule, also for training truth)."""
    return "has grown" if percent > STABLE_PERCENT else "has shrunk" if percent < -STABLE_PERCENT else "is stable"


def trend(ctx: CallContext, percent: Quantity | int | float) -> str:
    """The word for a volume change, decided here and not by the language model: reading "22.1 %"
    back and writing "is stable" was a common agent error near the threshold."""
    value, unit = _amount(percent)
    if unit not in (None, "%"):
        raise SandboxRuntimeError(f"trend(): takes a percent change (percent_change()), got a value in {unit}")
    return trend_word(value)


def asymmetry(ctx: CallContext, left: Quantity | int | float, right: Quantity | int | float) -> Quantity:
    vl, vr, _ = _same_unit("asymmetry", left, right)
    index = float(vo.asymmetry_index(vl, vr))
    return Quantity(index, None, f"asymmetry of {_label(left)} and {_label(right)}", asymmetry_meaning(index))


def count_components(ctx: CallContext, mask: Mask) -> Quantity:
    return Quantity(int(vo.connected_components(mask.volume).count), None, f"{mask.name} component count")


def largest_component(ctx: CallContext, mask: Mask) -> Mask:
    return Mask(vo.largest_component(mask.volume), f"largest component of {mask.name}", mask.source)


def extreme_component(ctx: CallContext, mask: Mask, direction: str) -> Mask:
    # an unknown direction is voxel_ops' MeasurementError, which the sandbox reports as feedback
    return Mask(vo.extreme_component(mask.volume, direction), f"most {direction} component of {mask.name}",
                mask.source)


def brightest_component(ctx: CallContext, scan: ImageValue, mask: Mask) -> Mask:
    on_scan = _mask_on_grid(mask, scan)
    return Mask(vo.brightest_component(scan.volume, on_scan), f"brightest component of {mask.name} in {scan.name}",
                mask.source)


def hemisphere(ctx: CallContext, mask: Mask) -> str:
    return str(vo.hemisphere(mask.volume))


def signal(ctx: CallContext, scan: ImageValue, mask: Mask, reference_mask: Mask) -> str:
    inside = _stats(scan, mask)["mean"]
    ref = _stats(scan, reference_mask)
    # relative to the reference tissue itself, not to the whole image: on CT, air and bone span
    # thousands of HU and would make every lesion "isointense". The reference's own spread stands in
    # for its mean when that is near zero (zero-centred intensities).
    scale = max(abs(ref["mean"]), ref["std"], 1e-6)
    contrast = (inside - ref["mean"]) / scale
    if contrast > SIGNAL_CONTRAST:
        return "hyperintense"
    if contrast < -SIGNAL_CONTRAST:
        return "hypointense"
    return "isointense"


# ---------------------------------------------------------------- masks and field of view

def _pair(a: Mask, b: Mask) -> tuple[Volume, Volume]:
    return a.volume, _mask_on_grid(b, a)


def union(ctx: CallContext, a: Mask, b: Mask) -> Mask:
    return Mask(vo.union(*_pair(a, b)), f"union of {a.name} and {b.name}", a.source)


def intersection(ctx: CallContext, a: Mask, b: Mask) -> Mask:
    return Mask(vo.intersection(*_pair(a, b)), f"intersection of {a.name} and {b.name}", a.source)


def subtract(ctx: CallContext, a: Mask, b: Mask) -> Mask:
    return Mask(vo.difference(*_pair(a, b)), f"{a.name} without {b.name}", a.source)


def _distance(fn: str, mm: float, limit: float) -> float:
    if not 0 <= mm <= limit:
        raise SandboxRuntimeError(f"{fn}(): distance must be between 0 and {limit:g} mm, got {mm:g}")
    return float(mm)


def dilate(ctx: CallContext, mask: Mask, mm: float) -> Mask:
    return Mask(vo.dilate_mm(mask.volume, _distance("dilate", mm, MAX_MORPHOLOGY_MM)),
                f"{mask.name} dilated {mm:g} mm", mask.source)


def erode(ctx: CallContext, mask: Mask, mm: float) -> Mask:
    return Mask(vo.erode_mm(mask.volume, _distance("erode", mm, MAX_MORPHOLOGY_MM)),
                f"{mask.name} eroded {mm:g} mm", mask.source)


def fill_holes(ctx: CallContext, mask: Mask) -> Mask:
    return Mask(vo.fill_holes(mask.volume), f"{mask.name} filled", mask.source)


def crop(ctx: CallContext, scan: ImageValue, mask: Mask, margin_mm: float = 0.0) -> ImageValue:
    margin = _distance("crop", margin_mm, MAX_MARGIN_MM)
    return _derive(scan, vo.crop_to_mask(scan.volume, _mask_on_grid(mask, scan), margin), f"{scan.name} cropped")


def keep(ctx: CallContext, scan: ImageValue, mask: Mask) -> ImageValue:
    return _derive(scan, vo.keep_region(scan.volume, _mask_on_grid(mask, scan)), f"{scan.name} within {mask.name}")


def remove(ctx: CallContext, scan: ImageValue, mask: Mask) -> ImageValue:
    return _derive(scan, vo.remove_region(scan.volume, _mask_on_grid(mask, scan)), f"{scan.name} without {mask.name}")


def threshold(ctx: CallContext, scan: ImageValue, value: Quantity | int | float) -> Mask:
    level, _ = _amount(value)
    return Mask(vo.threshold(scan.volume, level), f"{scan.name} above {level:g}", scan.source)


# ---------------------------------------------------------------- the registry

def _fn(name: str, params: list[Param], returns: str, description: str, fn: Any) -> LibraryFunction:
    return LibraryFunction(name=name, params=tuple(params), returns=returns, description=description, fn=fn)


def build_registry() -> Registry:
    """The library in listing order (vision, interaction, measurements, mask/FOV operations)."""
    m, s = Param("mask", MASK), Param("scan", IMAGE)
    return Registry([
        _fn("encode", [Param("scans", IMAGE, variadic=True)], "encoding",
            "Encode one or more volumes with the vision network (mark each with <MOD>).", encode),
        _fn("generate", [Param("enc", ENCODING), s, Param("target", TEXT)], "mask",
            "Segment a target structure in one encoded scan; the mask lies on that scan's grid.", generate),
        _fn("read", [Param("x", ANY)], "None",
            "Show a value to the agent in the next step (an encoding as its feature vectors).", read),
        _fn("respond", [Param("text", MESSAGE)], "None",
            "Add text (or a value in its text form) to the answer for the user.", respond),
        _fn("output", [Param("volume", IMAGE), Param("name", TEXT)], "None",
            "Mark a mask or image as a named result volume (saved as NIfTI).", output),
        _fn("stop", [], "None", "End the analysis; nothing after it runs.", stop),
        _fn("capabilities", [], "text",
            "What this system can analyze, as an answer to a request it cannot serve.", capabilities),
        _fn("volume", [m], "quantity [mL]", "Volume of a mask in millilitres.", volume),
        _fn("extents", [m], "record [mm]",
            "Extents of a mask along left_right, anterior_posterior and superior_inferior, in mm.", extents),
        _fn("height", [m], "quantity [mm]", "Superior-inferior extent of a mask in mm.", height),
        _fn("width", [m], "quantity [mm]", "Left-right extent of a mask in mm.", width),
        _fn("depth", [m], "quantity [mm]", "Anterior-posterior extent of a mask in mm.", depth),
        _fn("bbox", [m], "record [mm]", "World bounding box of a mask: min_x..max_z in mm (RAS).", bbox),
        _fn("centroid", [m], "record [mm]", "World centroid of a mask: x, y, z in mm (RAS).", centroid),
        _fn("mean_intensity", [s, m], "quantity", "Mean intensity of a scan within a mask.", mean_intensity),
        _fn("intensity_stats", [s, m], "record",
            "Mean, median, std, min and max intensity of a scan within a mask.", intensity_stats),
        _fn("snr", [s, m], "quantity", "Signal-to-noise ratio of a scan within a mask.", snr),
        _fn("ratio", [Param("a", AMOUNT), Param("b", AMOUNT)], "quantity", "Ratio a / b (same units).", ratio),
        _fn("difference", [Param("a", AMOUNT), Param("b", AMOUNT)], "quantity",
            "Difference a - b, keeping the unit.", difference),
        _fn("change", [Param("before", AMOUNT), Param("after", AMOUNT)], "record",
            "Change from before to after: absolute (same unit) and percent.", change),
        _fn("percent_change", [Param("before", AMOUNT), Param("after", AMOUNT)], "quantity [%]",
            "Change from before to after in percent.", percent_change),
        _fn("trend", [Param("percent", AMOUNT)], "text",
            f"Word for a percent change: 'has grown' above +{STABLE_PERCENT:g} %, 'has shrunk' below "
            f"-{STABLE_PERCENT:g} %, else 'is stable'.", trend),
        _fn("asymmetry", [Param("left", AMOUNT), Param("right", AMOUNT)], "quantity",
            "Asymmetry index of a left and a right value.", asymmetry),
        _fn("count_components", [m], "quantity", "Number of connected components of a mask.", count_components),
        _fn("largest_component", [m], "mask", "The largest connected component of a mask.", largest_component),
        _fn("extreme_component", [m, Param("direction", TEXT)], "mask",
            "The connected component lying furthest toward a direction: superior, inferior, left, right, "
            "anterior or posterior (by world centroid).", extreme_component),
        _fn("brightest_component", [s, m], "mask",
            "The connected component of a mask with the highest mean intensity in a scan.", brightest_component),
        _fn("hemisphere", [m], "text", "Side of a mask: 'left', 'right' or 'bilateral'.", hemisphere),
        _fn("union", [Param("a", MASK), Param("b", MASK)], "mask", "Voxels in a or b.", union),
        _fn("intersection", [Param("a", MASK), Param("b", MASK)], "mask", "Voxels in both a and b.", intersection),
        _fn("subtract", [Param("a", MASK), Param("b", MASK)], "mask", "Voxels in a but not in b.", subtract),
        _fn("dilate", [m, Param("mm", NUMBER)], "mask", "Grow a mask by a distance in mm.", dilate),
        _fn("erode", [m, Param("mm", NUMBER)], "mask", "Shrink a mask by a distance in mm.", erode),
        _fn("fill_holes", [m], "mask", "Fill enclosed holes of a mask.", fill_holes),
        _fn("crop", [s, m, Param("margin_mm", NUMBER, default=0.0)], "scan or mask",
            "Crop a volume to the box around a mask plus a margin in mm.", crop),
        _fn("keep", [s, m], "scan or mask", "Zero a volume outside a mask.", keep),
        _fn("remove", [s, m], "scan or mask", "Zero a volume inside a mask.", remove),
        _fn("threshold", [s, Param("value", AMOUNT)], "mask", "Mask of voxels whose intensity exceeds a value.",
            threshold),
        _fn("signal", [s, m, Param("reference_mask", MASK)], "text",
            "Signal of a region against a reference: 'hyperintense', 'hypointense' or 'isointense'.", signal),
    ])
