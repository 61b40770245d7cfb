"""Every library function called through the interpreter, with valid and with invalid arguments.

Masks come from `threshold` on a phantom with known geometry (brain ellipsoid 100, left lesion 200),
so expected values are computed independently with numpy; vision calls use the real (untrained) engine.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

import voxel_ops as vo
from agent.functions import default_registry
from tests.sandbox.conftest import phantom

SETUP = ("brain = threshold(t1, 50)\nlesion = threshold(t1, 150)\nrest = subtract(brain, lesion)\n"
         "vl = volume(lesion)\nvb = volume(brain)")


def ok(box, code):
    out = box.execute_step(code)
    assert out.error is None, out.error
    return out


@pytest.fixture
def box(make_sandbox, tmp_path):
    b = make_sandbox(output_dir=tmp_path / "out")
    ok(b, SETUP)
    return b


def voxels_ml(mask: np.ndarray) -> float:
    return float(mask.sum()) * 8.0 / 1000.0  # 2 mm isotropic voxels


def test_every_function_is_listed_with_signature_and_description():
    registry = default_registry()
    expected = {"encode", "generate", "read", "respond", "output", "stop", "capabilities", "volume", "extents",
                "height", "width",
                "depth", "bbox", "centroid", "mean_intensity", "intensity_stats", "snr", "ratio", "difference",
                "change", "percent_change", "trend", "asymmetry", "count_components", "largest_component",
                "extreme_component",
                "brightest_component", "hemisphere",
                "union", "intersection", "subtract", "dilate", "erode", "fill_holes", "crop", "keep", "remove",
                "threshold", "signal"}
    assert set(registry) == expected
    for item in registry.describe():
        assert item["signature"].startswith(item["name"] + "(") and "->" in item["signature"]
        assert item["description"] and "\n" not in item["description"]


def test_volume_and_mask_algebra(box, t1):
    lesion = t1.array > 150
    brain = t1.array > 50
    ok(box, "r = (vl, vb, volume(rest), volume(union(lesion, brain)), volume(intersection(lesion, brain)))")
    vl, vb, vr, vu, vi = box.env["r"]
    assert vl.unit == "mL" and vl.value == pytest.approx(voxels_ml(lesion))
    assert vb.value == pytest.approx(voxels_ml(brain))
    assert vr.value == pytest.approx(voxels_ml(brain & ~lesion))
    assert vu.value == pytest.approx(vb.value) and vi.value == pytest.approx(vl.value)
    assert ok(box, "read(vl)").feedback[0].text == f"{voxels_ml(lesion):.1f} mL"


@pytest.mark.parametrize("code,message", [
    ("volume(t1)", "'mask' must be a mask, got scan"),
    ("volume()", "missing 'mask'"),
    ("volume(lesion, lesion)", "takes 1 argument"),
    ("volume(mask=3)", "must be a mask, got number"),
    ("union(lesion)", "missing 'b'"),
    ("intersection(lesion, t1)", "must be a mask, got scan"),
    ("subtract(1, lesion)", "must be a mask"),
])
def test_bad_arguments_are_feedback(box, code, message):
    out = box.execute_step(code)
    assert out.error and message in out.error
    assert ok(box, "read(1)").feedback[0].text == "1"


def test_extents_height_width_depth_bbox_centroid(box):
    ok(box, "e = extents(lesion)\nh = height(lesion)\nw = width(lesion)\nd = depth(lesion)\n"
            "b = bbox(lesion)\nc = centroid(lesion)")
    env = box.env
    truth = vo.extents_mm(env["lesion"].volume)
    assert env["e"]["left_right"].value == pytest.approx(truth["left_right"])
    assert env["w"].value == pytest.approx(truth["left_right"]) and env["w"].unit == "mm"
    assert env["h"].value == pytest.approx(truth["superior_inferior"])
    assert env["d"].value == pytest.approx(truth["anterior_posterior"])
    assert 12.0 <= env["w"].value <= 20.0  # a sphere of radius 8 mm on a 2 mm grid
    assert env["c"]["x"].value == pytest.approx(-10.0, abs=0.5) and env["c"]["y"].value == pytest.approx(0, abs=0.5)
    assert env["b"]["min_x"].value < -10 < env["b"]["max_x"].value < 0
    text = ok(box, "read(e)").feedback[0].text
    assert text.startswith("left_right=") and text.count(" mm") == 3
    assert "must be a mask" in box.execute_step("height(t1)").error


def test_intensity_functions_and_signal(box, make_sandbox, t1):
    ok(box, "m = mean_intensity(t1, lesion)\ns = intensity_stats(t1, rest)\nq = snr(t1, brain)\n"
            "hi = signal(t1, lesion, rest)\nlo = signal(t1, rest, lesion)\niso = signal(t1, lesion, lesion)")
    env = box.env
    assert env["m"].value == pytest.approx(200.0) and env["m"].unit is None
    assert env["s"]["mean"].value == pytest.approx(100.0) and env["s"]["std"].value == pytest.approx(0.0)
    assert env["q"].value == pytest.approx(vo.snr(t1, env["brain"].volume))
    assert (env["hi"], env["lo"], env["iso"]) == ("hyperintense", "hypointense", "isointense")
    assert "must be a mask" in box.execute_step("mean_intensity(t1, t1)").error
    assert "missing 'reference_mask'" in box.execute_step("signal(t1, lesion)").error
    # CT intensities carry Hounsfield units
    ct = make_sandbox(scans={"ct": phantom(modality="CT")})
    ok(ct, "r = mean_intensity(ct, threshold(ct, 150))")
    assert ct.env["r"].unit == "HU" and ct.env["r"].text == "200.0 HU"


def test_masks_from_another_grid_are_resampled(make_sandbox, t1):
    flair = vo.resample_to_spacing(t1, 3.0, order=0)
    box = make_sandbox(scans={"t1": t1, "flair": flair})
    ok(box, "lesion = threshold(t1, 150)\nr = mean_intensity(flair, erode(lesion, 2))")
    assert box.env["r"].value == pytest.approx(200.0)


def test_capabilities_follow_the_loaded_targets(make_sandbox, t1):
    """The refusal text claims only what the phi bank can draw."""
    from agent.functions.capabilities import CAPABILITIES, CAPABILITIES_V2, V2_TARGETS
    from agent.phi_bank import PhiBank

    rich = PhiBank({"T1": np.ones(32)}, {t: np.ones(32) for t in (*V2_TARGETS, "brain", "lesion")})
    poor = PhiBank({"T1": np.ones(32)}, {t: np.ones(32) for t in ("brain", "lesion", "hippocampus")})
    for bank, text in ((rich, CAPABILITIES_V2), (poor, CAPABILITIES)):
        box = make_sandbox(phi_bank=bank)
        ok(box, "respond(capabilities())\nstop()")
        assert box.result().status == "succeeded" and box.result().text == text


def test_derived_quantities(box, t1):
    vl, vb = voxels_ml(t1.array > 150), voxels_ml(t1.array > 50)
    ok(box, "ra = ratio(vl, vb)\ndi = difference(vb, vl)\nch = change(vl, vb)\npc = percent_change(vl, vb)\n"
            "asy = asymmetry(vl, vb)\nn = ratio(3, 4)")
    env = box.env
    assert env["ra"].value == pytest.approx(vl / vb) and env["ra"].unit is None
    assert env["di"].value == pytest.approx(vb - vl) and env["di"].unit == "mL"
    assert env["ch"]["absolute"].value == pytest.approx(vb - vl) and env["ch"]["percent"].unit == "%"
    assert env["pc"].value == pytest.approx(100 * (vb - vl) / vl)
    assert env["asy"].value == pytest.approx(2 * (vl - vb) / (vl + vb))
    # an index says what its sign means, in every way it is shown
    assert env["asy"].value < 0 and env["asy"].text.endswith(" (right larger)")
    ok(box, 'msg = f"{asy:.2f} and {asymmetry(vb, vl)}"\nflat = asymmetry(vl, vl)')
    assert box.env["msg"].endswith(" (right larger) and " + f"{-env['asy'].value:.3f} (left larger)")
    assert box.env["flat"].text == "0.000 (no asymmetry)"
    assert env["n"].value == 0.75
    ok(box, "h = height(lesion)")
    assert "units differ (mL vs mm)" in box.execute_step("ratio(vl, h)").error
    assert "denominator is 0" in box.execute_step("ratio(vl, 0)").error
    assert "undefined when the value before is 0" in box.execute_step("percent_change(0, vl)").error
    assert "must be a quantity or number" in box.execute_step("difference('a', vl)").error


def test_trend_words_a_percent_change_at_the_stable_band(box, t1):
    vl, vb = voxels_ml(t1.array > 150), voxels_ml(t1.array > 50)
    ok(box, "up = trend(percent_change(vl, vb))\ndown = trend(percent_change(vb, vl))\n"
            "edge = trend(20.0)\njust = trend(20.01)\nlow = trend(-20.01)")
    assert vb > 1.25 * vl  # the threshold mask grows by far more than 20 % from 150 to 50
    assert (box.env["up"], box.env["down"]) == ("has grown", "has shrunk")
    assert (box.env["edge"], box.env["just"], box.env["low"]) == ("is stable", "has grown", "has shrunk")
    ok(box, "h = height(lesion)")
    assert "takes a percent change" in box.execute_step("trend(h)").error


def test_components_hemisphere_largest(make_sandbox, t1):
    array = np.zeros_like(t1.array)
    array[2:6, 2:6, 2:6] = 1.0  # 64 voxels
    array[14:17, 14:17, 14:17] = 1.0  # 27 voxels
    box = make_sandbox(scans={"t1": t1, "two": t1.with_array(array)})
    ok(box, "m = threshold(two, 0.5)\nn = count_components(m)\nbig = largest_component(m)\nv = volume(big)\n"
            "side = hemisphere(threshold(t1, 150))\nboth = hemisphere(threshold(t1, 50))")
    assert box.env["n"].value == 2 and box.env["n"].text == "2"
    assert box.env["v"].value == pytest.approx(64 * 0.008)
    assert (box.env["side"], box.env["both"]) == ("left", "bilateral")
    assert "must be a mask" in box.execute_step("count_components(two)").error


@pytest.mark.parametrize("lesion_hu, expected", [(15.0, "hypointense"), (45.0, "hyperintense"), (28.5, "isointense")])
def test_signal_on_ct_is_relative_to_the_reference_tissue(make_sandbox, t1, lesion_hu, expected):
    """Air (-1000 HU) and bone (+1500 HU) must not swamp a 13 HU difference within brain tissue."""
    array = np.full(t1.shape, -1000.0, dtype=np.float32)
    array[1:-1, 1:-1, 1:-1] = 1500.0  # skull
    array[3:-3, 3:-3, 3:-3] = 28.0  # white matter
    lesion = np.zeros(t1.shape, dtype=np.float32)
    lesion[8:12, 8:12, 8:12] = 1.0
    array[lesion > 0] = lesion_hu
    wm = (array == 28.0).astype(np.float32)
    ct = make_sandbox(scans={"ct": t1.with_array(array), "lesion_map": t1.with_array(lesion),
                             "wm_map": t1.with_array(wm)})
    ok(ct, "s = signal(ct, threshold(lesion_map, 0.5), threshold(wm_map, 0.5))")
    assert ct.env["s"] == expected


def test_components_picked_by_direction_and_brightness(make_sandbox, t1):
    """Pieces told apart by where they lie (world axes) and by their mean intensity in a scan."""
    pieces = np.zeros_like(t1.array)
    pieces[2:6, 2:6, 2:6] = 1.0  # 64 voxels, low x/y/z corner: left, posterior, inferior
    pieces[14:17, 14:17, 14:17] = 1.0  # 27 voxels, high corner: right, anterior, superior
    bright = t1.array * 0 + 10.0
    bright[14:17, 14:17, 14:17] = 90.0
    box = make_sandbox(scans={"t1": t1, "two": t1.with_array(pieces), "img": t1.with_array(bright)})
    ok(box, "m = threshold(two, 0.5)\nup = volume(extreme_component(m, 'superior'))\n"
            "low = volume(extreme_component(m, 'inferior'))\nleft = volume(extreme_component(m, 'left'))\n"
            "hot = volume(brightest_component(img, m))")
    env = box.env
    assert env["up"].value == pytest.approx(27 * 0.008) and env["hot"].value == pytest.approx(27 * 0.008)
    assert env["low"].value == pytest.approx(64 * 0.008) and env["left"].value == pytest.approx(64 * 0.008)
    assert "direction must be one of" in box.execute_step("extreme_component(m, 'upwards')").error
    assert "must be a mask" in box.execute_step("brightest_component(img, two)").error


def test_morphology_and_fill(box, t1):
    ok(box, "r = (volume(dilate(lesion, 2)), volume(erode(lesion, 2)), volume(fill_holes(rest)), vl, vb)")
    grown, shrunk, filled, vl, vb = box.env["r"]
    assert grown.value > vl.value > shrunk.value > 0
    assert filled.value == pytest.approx(vb.value)  # the lesion is a hole inside the brain
    assert "between 0 and 50 mm" in box.execute_step("dilate(lesion, 1000)").error
    assert "between 0 and 50 mm" in box.execute_step("erode(lesion, -1)").error
    assert "must be a number" in box.execute_step("dilate(lesion, 'a')").error


def test_field_of_view_operations(box, t1):
    ok(box, "c = crop(t1, lesion, 2)\ncm = crop(lesion, lesion)\nk = keep(t1, lesion)\nrm = remove(t1, lesion)\n"
            "r = (volume(threshold(k, 50)), volume(threshold(rm, 150)), volume(threshold(rm, 50)), volume(cm))")
    env = box.env
    assert env["c"].kind == "scan" and env["cm"].kind == "mask"
    assert all(a < b for a, b in zip(env["c"].volume.shape, t1.shape))
    kept, removed_lesion, removed_brain, cropped = env["r"]
    assert kept.value == pytest.approx(env["vl"].value) and removed_lesion.value == 0.0
    assert removed_brain.value == pytest.approx(env["vb"].value - env["vl"].value)
    assert cropped.value == pytest.approx(env["vl"].value)
    # the cropped scan keeps world geometry: its lesion centroid is where it was
    ok(box, "cc = centroid(threshold(c, 150))")
    assert env["cc"]["x"].value == pytest.approx(-10.0, abs=0.5)
    assert "between 0 and 100 mm" in box.execute_step("crop(t1, lesion, 500)").error
    assert "must be a mask" in box.execute_step("keep(t1, t1)").error
    assert "must be a scan or mask" in box.execute_step("remove(3, lesion)").error


def test_threshold_accepts_quantities(box):
    ok(box, "level = mean_intensity(t1, rest)\nm = threshold(t1, level)")
    assert box.env["m"].volume.array.sum() == (box.env["t1"].volume.array > 100).sum()
    assert "must be a quantity or number" in box.execute_step("threshold(t1, 'high')").error


def test_read_respond_output_stop(box, tmp_path, t1):
    out = ok(box, "read('text')\nread(3)\nread((vl, 'x'))\nread(lesion)\nread(t1)\nread(None)")
    texts = [f.text for f in out.feedback]
    assert texts[:3] == ["text", "3", f"({box.env['vl'].text}, x)"]
    assert texts[3].startswith("<mask t1 above 150: ") and texts[4].startswith("<scan t1: 24x28x24")
    out = ok(box, "respond('The lesion measures')\nrespond(vl)\nrespond(3)")
    assert out.responses == ["The lesion measures", box.env["vl"].text, "3"]
    assert "must be text, a quantity or a number" in box.execute_step("respond(lesion)").error
    out = ok(box, "output(lesion, 'lesion mask')\noutput(t1, 'input')")
    path = tmp_path / "out" / "lesion_mask.nii.gz"
    assert [o.name for o in out.outputs] == ["lesion mask", "input"] and out.outputs[0].path == str(path)
    assert out.outputs[0].kind == "mask" and out.outputs[0].source == "t1" and out.outputs[1].kind == "image"
    img = nib.load(path)
    assert img.get_data_dtype() == np.uint8 and img.shape == t1.shape
    np.testing.assert_allclose(img.affine, t1.affine)
    np.testing.assert_array_equal(np.asarray(img.dataobj), (t1.array > 150).astype(np.uint8))
    assert "already exists" in box.execute_step("output(lesion, 'lesion mask')").error
    assert "name must be" in box.execute_step("output(lesion, '../../etc/passwd')").error
    assert "must be a scan or mask" in box.execute_step("output(vl, 'v')").error
    assert "takes 0 argument" in box.execute_step("stop(1)").error
    assert set(box.output_volumes) == {"lesion mask", "input"}
    assert box.execute_step("stop()").stopped and box.stopped


def test_encode_and_generate_with_the_real_engine(real_sandbox, t1, tmp_path):
    flair = vo.resample_to_spacing(t1, 3.0)
    box = real_sandbox(scans={"t1": t1, "flair": flair}, output_dir=tmp_path)
    out = ok(box, "e = encode(t1<MOD>, flair<MOD>)\nread(e)\nm = generate(e, flair<MOD>, 'lesion')\n"
                  "output(m, 'lesion')\nv = volume(m)")
    assert out.feedback[0].vectors.shape == (2, 256) and out.feedback[0].text is None
    mask = box.env["m"]
    assert mask.kind == "mask" and mask.source == "flair" and mask.name == "lesion"
    assert mask.volume.same_grid(flair) and set(np.unique(mask.volume.array)) <= {0, 1}
    assert mask.probabilities.shape == flair.shape
    assert box.env["v"].value == pytest.approx(mask.volume.array.sum() * flair.voxel_volume_mm3 / 1000)
    saved = nib.load(tmp_path / "lesion.nii.gz")
    assert saved.shape == flair.shape and np.allclose(saved.affine, flair.affine)
    assert "unsupported target 'unicorn'" in box.execute_step("generate(e, t1, 'unicorn')").error
    assert "gray matter" in box.execute_step("generate(e, t1, 'unicorn')").error  # lists what is supported
    ok(box, "e1 = encode(t1)")
    assert "'flair' is not in this encoding" in box.execute_step("generate(e1, flair, 'brain')").error
    assert "at least one" in box.execute_step("encode()").error
    assert "must be a scan or mask" in box.execute_step("encode(3)").error
    assert "must be an encoding" in box.execute_step("generate(t1, t1, 'brain')").error
    assert "must be text" in box.execute_step("generate(e1, t1, 3)").error
    assert "at most 8 volumes" in box.execute_step("encode(" + ", ".join(["t1"] * 9) + ")").error
    box.close()  # releases the job's encodings: later vision calls on them fail as feedback
    assert box.execute_step("m2 = generate(e1, t1, 'brain')").error
    assert ok(box, "read(2)").feedback[0].text == "2"


@pytest.mark.parametrize("code", ["d = difference(1e308, -1e308)\nrespond(f'{d}')",
                                  "d = ratio(1e308, 1e-308)\nrespond(f'{d}')",
                                  "x = 1e308 * 10\nrespond(f'{x}')",
                                  "x = -1e308 - 1e308\nrespond(f'{x}')"])
def test_non_finite_results_are_a_clear_error_never_a_metric(box, code):
    out = box.execute_step(code)
    assert out.error is not None and "finite" in out.error, out.error
    assert not [m for m in box.result().metrics if isinstance(m.value, float) and m.value != m.value]
    assert all(not isinstance(m.value, float) or abs(m.value) != float("inf") for m in box.result().metrics)
    box.result().model_dump_json()  # the result serializes


def test_outputs_never_share_a_file_and_names_end_at_the_end(box, tmp_path):
    ok(box, "output(lesion, 'a b')")
    for clash in ("a_b", "A B", "a b "[:3].upper().replace(" ", "_")):
        err = box.execute_step(f"output(brain, {clash!r})").error
        assert err is not None and "same file name" in err, (clash, err)
    # the first output's file still holds the first mask, not one written over it
    saved = nib.load(tmp_path / "out" / "a_b.nii.gz")
    assert np.array_equal(np.asarray(saved.dataobj) > 0, box.output_volumes["a b"].array > 0)
    assert [o.name for o in box.result().outputs] == ["a b"]
    for bad in ("nl\\n", "x\\n", "trail\\r\\n"):
        err = box.execute_step(f"output(brain, '{bad}')").error
        assert err is not None and "name must be" in err, (bad, err)
    ok(box, "output(brain, 'a.b')")  # a distinct file name is fine
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.b.nii.gz", "a_b.nii.gz"]
