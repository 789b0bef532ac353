"""cad.plan: the arithmetic of a plan (exact terms, batches, cached work), the coefficients file's provenance, and
memory=auto's choice against a given free memory (no GPU needed: the free memory is a number)."""

from __future__ import annotations

import pytest

from cad import plan

GB = 10**9


def test_coefficients_record_where_they_were_measured():
    data = plan.load_coefficients()
    for kind in ("cpu", "cuda"):
        dev = data["devices"][kind]
        assert dev["device"] and dev["date"] and dev["archs"], kind
    cpu = data["devices"]["cpu"]["archs"]
    assert {"sd1", "sdxl", "sd35m"} <= set(cpu)
    assert all(len(cpu[a]["sizes"]) >= 2 for a in ("sd1", "sdxl", "sd35m"))  # two sizes per architecture
    assert plan.source_label("cpu").startswith("estimate from CPU-measured coefficients")


def test_stored_counts_are_the_meta_device_counts():
    from cad.architectures import build_on_meta, count_matching

    stored = plan.load_coefficients()["counts"]["sd1"]
    model = build_on_meta("sd1")
    assert stored["params"] == sum(p.numel() for p in model.parameters()) == 859_520_964
    assert stored["space_numel"] == count_matching(model, r"\.ff\.net\.(0\.proj|2)\.weight$")[1] == 148_684_800


@pytest.mark.parametrize("arch", ["sd1", "sdxl", "sd35m", "sd35l", "flux"])
def test_memory_parts_add_up_and_low_holds_less(arch):
    c = plan.counts(arch)
    fast = plan.attribution_memory(arch, resolution=1024, dtype="bfloat16", mode="fast", batch=4)
    low = plan.attribution_memory(arch, resolution=1024, dtype="bfloat16", mode="low", batch=4)
    for m in (fast, low):
        assert m["total"] == m["weights"] + m["gradient_sums"] + m["half_gradients"] + m["activations"]
        assert m["weights"] == 2 * c["params"] and m["gradient_sums"] == 4 * c["space_numel"]
    assert fast["half_gradients"] == 2 * c["space_numel"] + 4 * c["space_max"]  # autograd.grad's full half set
    assert low["half_gradients"] == 2 * c["space_max"]  # streamed: one tensor at a time
    assert low["total"] < fast["total"]
    # fast runs the 4 trajectories as one pass, low one at a time (micro_batch 1)
    one = plan.attribution_memory(arch, resolution=1024, dtype="bfloat16", mode="fast", batch=1)
    assert fast["activations"] == pytest.approx(4 * one["activations"], rel=1e-6, abs=8)


def test_float32_sums_live_in_grad_and_have_no_half_set():
    m = plan.attribution_memory("sd1", resolution=512, dtype="float32", mode="fast", batch=1)
    assert m["half_gradients"] == 4 * plan.counts("sd1")["space_max"]


def test_generation_counts_batches_and_subtracts_cached_images():
    kw = dict(resolution=512, dtype="float16", steps=50, cfg=True, batch=4)
    full = plan.generation_stage("sd1", images=10, **kw)
    per = {b: plan.seconds("sd1", "infer", 512, b, "float16") for b in (8, 4)}
    f = plan.generation_factor("sd1")  # plain diffusers on an H200 / the composition from single passes
    assert f > 1 and plan.generation_factor("sd1", device="cpu") == 1.0
    assert full.seconds == pytest.approx(f * 50 * (2 * per[8] + per[4]))  # 2 full batches of 4 (x2 CFG) + 2 images
    assert plan.generation_stage("sd1", images=10, calibrated=False, **kw).seconds == pytest.approx(full.seconds / f)
    part = plan.generation_stage("sd1", images=10, cached_images=6, **kw)
    assert part.images == 4 and part.parts["cached_images"] == 6
    assert part.seconds == pytest.approx(f * 50 * per[8])
    done = plan.generation_stage("sd1", images=10, cached_images=10, **kw)
    assert done.cached and done.seconds == 0


def test_time_grows_with_steps_and_k_and_cached_attribution_costs_nothing():
    base = dict(resolution=512, dtype="float16", mode="fast")
    a = plan.attribution_stage("sd1", steps=10, **base)
    b = plan.attribution_stage("sd1", steps=20, **base)
    walk = plan.fingerprint_seconds("sd1", "float16")  # once per attribution, whatever its steps
    assert a.parts["fingerprint_s"] == walk > 0
    assert b.seconds - walk == pytest.approx(2 * (a.seconds - walk))
    assert plan.attribution_stage("sd1", steps=10, num_samples=8, **base).seconds >= a.seconds
    assert plan.attribution_stage("sd1", steps=10, cached=True, **base).seconds == 0


def test_every_method_has_an_edit_cost():
    for method in ("esd", "uce", "rece", "conceptprune"):
        st = plan.edit_stage(method, "sd1", resolution=512, dtype="float16")
        assert st.seconds > 0 and st.peak_bytes > plan.counts("sd1")["params"] * 2, method
    assert plan.edit_stage("none", "sd1", resolution=512, dtype="float16") is None
    esd = plan.edit_stage("esd", "sd1", resolution=512, dtype="float16", settings={"iterations": 100})
    assert esd.seconds == pytest.approx(
        plan.edit_stage("esd", "sd1", resolution=512, dtype="float16").seconds / 10)


def _stage_for(arch, dtype="bfloat16"):
    return lambda mode, res=1024: plan.attribution_stage(arch, resolution=res, dtype=dtype, mode=mode, steps=4)


def test_auto_picks_the_fastest_mode_that_fits():
    stage = _stage_for("flux")
    fast, low = stage("fast").peak_bytes, stage("low").peak_bytes
    assert low < fast
    assert plan.choose_mode("auto", fast + plan.RESERVE + GB, stage) == "fast"
    assert plan.choose_mode("auto", (fast + low) // 2 + plan.RESERVE, stage) == "low"
    assert plan.choose_mode("auto", None, stage) == "fast"  # a CPU run: no free-memory figure
    assert plan.choose_mode("low", 10**15, stage) == "low"  # an explicit mode is kept


def test_what_would_fit_names_the_alternatives():
    stage = _stage_for("flux")
    free = 24 * GB
    text = plan.what_would_fit("flux", free, resolution=1024, dtype="bfloat16", stage_for=stage)
    assert "model.device_map=balanced" in text and "GPU with at least" in text


def test_plan_lines_say_what_the_estimate_rests_on():
    st = [plan.attribution_stage("sd1", resolution=512, dtype="float16", mode="low"),
          plan.generation_stage("sd1", resolution=512, dtype="float16", images=5000, steps=50, cached_images=1200)]
    p = plan.Plan("sd1", "float16", 512, st, "NVIDIA H100 80GB HBM3", plan.source_label("cuda"))
    text = "\n".join(p.lines())
    assert "estimate from" in text and "coefficients" in text
    assert "attribution: ~" in text and "in memory=low" in text
    assert "5,000 images (1,200 cached)" in text and "GPU-hours" in text
    assert p.images == 3800


def test_low_runs_the_k_trajectories_one_pass_each():
    base = dict(resolution=512, dtype="float16", mode="low", steps=10)
    one = plan.attribution_stage("sd1", num_samples=1, **base)
    four = plan.attribution_stage("sd1", num_samples=4, **base)
    sec = {(m, b): plan.seconds("sd1", m, 512, b, "float16") for m in ("low", "infer") for b in (1, 4)}
    assert four.seconds - one.seconds == pytest.approx(10 * (3 * sec["low", 1] + sec["infer", 4] - sec["infer", 1]))
    assert four.parts["per_pass"] == 1 and four.peak_bytes == one.peak_bytes  # low's memory does not grow with K


def test_the_weights_walk_and_edit_factors_come_from_the_gpu_measurements(monkeypatch):
    """Each attribution hashes the denoiser's weights once (twice the bytes unless float16) at the rate bench_gpu.py
    measured; a baseline's composed edit time is scaled by its measured / composed factor on CUDA only."""
    cuda = plan.coefficients()["devices"]["cuda"]
    rate = cuda["fingerprint_bytes_per_s"]
    params = plan.counts("flux")["params"]
    assert plan.fingerprint_seconds("flux", "bfloat16") == pytest.approx(params * 2 * 2 / rate)
    assert plan.fingerprint_seconds("sd1", "float16") == pytest.approx(plan.counts("sd1")["params"] * 2 / rate)
    assert plan.fingerprint_seconds("sd1", "float16", device="cpu") == pytest.approx(
        plan.counts("sd1")["params"] * 2 / plan.ASSUMED_FINGERPRINT_RATE)
    kw = dict(resolution=512, dtype="float16", settings={"iterations": 10})
    for method in ("esd", "conceptprune"):
        factor = cuda["edit_factors"][method]
        assert factor > 1  # the composition from single passes left work out
        calibrated = plan.edit_stage(method, "sd1", **kw).seconds
        assert calibrated == pytest.approx(factor * plan.edit_stage(method, "sd1", calibrated=False, **kw).seconds)
        assert plan.edit_stage(method, "sd1", device="cpu", **kw).seconds == pytest.approx(
            plan.edit_stage(method, "sd1", device="cpu", calibrated=False, **kw).seconds)
