"""VisionEngine: orientation round trip, cache cap and release, batching, checkpoints."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from nibabel import orientations as ornts

from vision.cache import EncodingNotCached
from vision.checkpoint import load_vision, save_vision
from vision.engine import EncodingHandle, VisionEngine
from vision.model import build_vision_net
from voxel_ops.volume import Volume, VolumeMeta


def _ras_volume(shape=(40, 44, 12), spacing=(2.0, 2.0, 5.0), seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-40.0, -44.0, -30.0]
    return Volume(rng.random(shape).astype(np.float32) * 300, affine, VolumeMeta(modality="T2"))


def _reorient(vol: Volume, codes: str) -> Volume:
    """The same image stored with another axis order/flip (same world positions)."""
    target = ornts.axcodes2ornt(tuple(codes))
    ornt = ornts.ornt_transform(ornts.io_orientation(vol.affine), target)
    array = ornts.apply_orientation(vol.array, ornt)
    affine = vol.affine @ ornts.inv_ornt_aff(ornt, vol.shape)
    return Volume(np.ascontiguousarray(array), affine, vol.meta)


@pytest.fixture(scope="module")
def engine():
    eng = VisionEngine(preset="tiny", device="cpu", cache_mb=512)
    yield eng
    eng.close()


def test_engine_defaults_to_cpu_without_cuda(engine):
    if not torch.cuda.is_available():
        assert VisionEngine(preset="tiny").device.type == "cpu"
    assert engine.config.name == "tiny"


def test_round_trip_non_ras_volume_returns_mask_on_input_grid(engine):
    ras = _ras_volume()
    odd = _reorient(ras, "PIL")  # thick axis moves to the middle, two axes flipped
    assert odd.orientation == ("P", "I", "L")
    phi_e, phi_g = np.linspace(-1, 1, 32), np.cos(np.arange(32.0))
    h_odd = engine.encode([odd], [phi_e], job_id="rt")
    out = engine.generate(h_odd, 0, phi_g)
    assert out.shape == odd.shape
    assert np.allclose(out.affine, odd.affine)
    assert out.array.dtype == np.float32
    assert out.array.min() >= 0.0 and out.array.max() <= 1.0
    assert out.meta.modality == "T2"
    # the same anatomy sent in RAS gives the same probabilities at the same world points
    h_ras = engine.encode([ras], [phi_e], job_id="rt")
    out_ras = engine.generate(h_ras, 0, phi_g)
    assert np.allclose(_reorient(out_ras, "PIL").array, out.array, atol=1e-5)
    assert np.allclose(h_odd.vectors, h_ras.vectors, atol=1e-5)
    assert h_odd.vectors.shape == (1, 256)
    engine.release("rt")


def test_multi_stream_handle_and_stream_index(engine):
    a, b = _ras_volume(seed=1), _ras_volume(shape=(20, 22, 20), spacing=(4.0, 4.0, 3.0), seed=2)
    handle = engine.encode([a, _reorient(b, "LPS")], [np.zeros(32), np.ones(32)], job_id="multi")
    assert isinstance(handle, EncodingHandle) and handle.stream_count == 2
    assert handle.vectors.shape == (2, 256)
    out = engine.generate(handle, 1, np.ones(32))
    assert out.shape == (20, 22, 20) and out.orientation == ("L", "P", "S")
    with pytest.raises(IndexError):
        engine.generate(handle, 2, np.ones(32))
    with pytest.raises(ValueError):
        engine.encode([a], [np.zeros(32), np.zeros(32)])
    with pytest.raises(ValueError):
        engine.generate(handle, 0, np.zeros(7))
    engine.release("multi")


def test_release_drops_only_that_job(engine):
    vol = _ras_volume()
    h1 = engine.encode([vol], [np.zeros(32)], job_id="job-1")
    h2 = engine.encode([vol], [np.zeros(32)], job_id="job-2")
    engine.release("job-1")
    with pytest.raises(EncodingNotCached):
        engine.generate(h1, 0, np.zeros(32))
    assert engine.generate(h2, 0, np.zeros(32)).shape == vol.shape
    engine.release("job-2")
    assert h2.key not in engine.cache


def test_cache_evicts_least_recently_used_under_the_cap():
    vol = _ras_volume(shape=(64, 64, 64), spacing=(2.0, 2.0, 2.0))
    probe = VisionEngine(preset="tiny", device="cpu")
    size = probe.cache.get(probe.encode([vol], [np.zeros(32)]).key).nbytes
    probe.close()
    eng = VisionEngine(preset="tiny", device="cpu", cache_mb=2.5 * size / 2**20)  # room for two
    try:
        h = [eng.encode([vol], [np.zeros(32)], job_id=f"j{i}") for i in range(2)]
        eng.generate(h[0], 0, np.zeros(32))  # h[0] becomes the most recently used
        h.append(eng.encode([vol], [np.zeros(32)], job_id="j2"))
        assert len(eng.cache) == 2 and eng.cache.evictions == 1
        assert eng.cache.nbytes <= eng.cache.max_bytes
        with pytest.raises(EncodingNotCached):
            eng.generate(h[1], 0, np.zeros(32))
        for kept in (h[0], h[2]):
            assert eng.generate(kept, 0, np.zeros(32)).shape == vol.shape
    finally:
        eng.close()


@pytest.mark.parametrize("stack", [False, True])
def test_concurrent_generate_calls_are_batched_with_identical_results(stack):
    eng = VisionEngine(preset="tiny", device="cpu", batch_window_ms=150, stack_batches=stack)
    try:
        vols = [_ras_volume(seed=s) for s in range(2)]
        handles = [eng.encode([v], [np.zeros(32)], job_id="b") for v in vols]
        phis = [np.full(32, 0.1 * i, dtype=np.float32) for i in range(4)]
        jobs = [(handles[i % 2], phis[i]) for i in range(4)]
        expected = [eng.generate(h, 0, p).array for h, p in jobs]
        assert eng.batch_sizes == [1, 1, 1, 1]
        results: list[np.ndarray | None] = [None] * 4
        barrier = threading.Barrier(4)

        def call(i):
            barrier.wait()
            results[i] = eng.generate(jobs[i][0], 0, jobs[i][1]).array

        threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert max(eng.batch_sizes[4:]) > 1
        for got, want in zip(results, expected):
            # per request (the default): bit-identical whatever else was in flight; stacked: close
            assert np.array_equal(got, want) if not stack else np.allclose(got, want, atol=1e-5)
    finally:
        eng.close()


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3)
    net = build_vision_net("tiny").eval()
    save_vision(net, tmp_path / "m")
    assert (tmp_path / "m" / "vision.safetensors").is_file()
    assert (tmp_path / "m" / "vision_config.json").is_file()
    again = load_vision(tmp_path / "m")
    assert again.config == net.config
    for (k, a), (_, b) in zip(net.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    vol = _ras_volume()
    loaded = VisionEngine.load(tmp_path / "m", device="cpu")
    try:
        out = loaded.generate(loaded.encode([vol], [np.ones(32)]), 0, np.ones(32)).array
        x = torch.from_numpy(((np.clip(vol.array, *np.percentile(vol.array, [0.5, 99.5])) -
                               np.percentile(vol.array, 0.5)) /
                              np.ptp(np.percentile(vol.array, [0.5, 99.5]))).astype(np.float32))[None, None]
        with torch.inference_mode():
            ref = torch.sigmoid(net.generate(net.encode([x], [vol.spacing], [torch.ones(32)]), 0, torch.ones(32)))
        assert np.allclose(out, ref[0, 0].numpy(), atol=1e-4)
        random_engine = VisionEngine(preset="tiny", device="cpu")
        other = random_engine.generate(random_engine.encode([vol], [np.ones(32)]), 0, np.ones(32)).array
        random_engine.close()
        assert not np.allclose(out, other, atol=1e-4)
    finally:
        loaded.close()
    with pytest.raises(FileNotFoundError):
        VisionEngine.load(tmp_path / "missing")
