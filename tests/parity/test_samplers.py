"""Sampler trajectories against the diffusers scheduler of the same name and config.

Driven by a deterministic stand-in denoiser (milliseconds) over steps x spacings x prediction
types in float64 and float32, and by the tiny UNet fixture. Every step is compared (the callback
sees each reported step), timesteps must be equal, and noise-injecting samplers must draw the same
noise from the same generator seed.
"""

from __future__ import annotations

import inspect

import numpy as np

import pytest
import torch
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler,
                       UNet2DConditionModel)

import reference_checkpoints
from helpers import assert_detects, errors
from musicldm_core.samplers.config import scheduler_config
from musicldm_core.samplers import SAMPLERS, Scheduler
from musicldm_core.samplers.lms import gauss_kronrod_21, lms_coefficient
from musicldm_core.samplers.schedule import sigma_to_t
from musicldm_core.unet import UNet

# the checkpoint's scheduler_config.json: the published keys, and DDIMScheduler's own "leading" spacing
PUBLISHED = {**reference_checkpoints.PUBLISHED["scheduler"], "timestep_spacing": "leading"}
REFERENCE = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "lms": LMSDiscreteScheduler, "euler": EulerDiscreteScheduler,
             "euler_ancestral": EulerAncestralDiscreteScheduler, "heun": HeunDiscreteScheduler,
             "dpmsolver++": DPMSolverMultistepScheduler}
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}  # every sampler is bit-exact today: wide margins


def stand_in(x: torch.Tensor, t) -> torch.Tensor:
    """A smooth, timestep-dependent, nonlinear 'denoiser' so every coefficient matters."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return (torch.sin(x * 1.3 + t / 300.0) * 0.8 + 0.1 * x).to(x.dtype)


def reference_run(name, cfg, steps, x, model, eta=0.0, seed=None):
    s = REFERENCE[name].from_config(cfg)
    s.set_timesteps(steps)
    params = inspect.signature(s.step).parameters
    kw = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = torch.Generator().manual_seed(seed) if seed is not None else None
    x = x * s.init_noise_sigma
    ts, traj = [], []
    for i, t in enumerate(s.timesteps):
        out = model(s.scale_model_input(x, t), t)
        x = s.step(out, t, x, **kw).prev_sample
        ts.append(float(t))
        order = getattr(s, "order", 1)
        warmup = len(s.timesteps) - steps * order
        if i == len(s.timesteps) - 1 or ((i + 1) > warmup and (i + 1) % order == 0):
            traj.append((i, x))
    return ts, traj


def our_run(name, cfg, steps, x, model, eta=0.0, seed=None):
    ts, traj = [], []

    def counted(x_in, t):
        ts.append(float(t))
        return model(x_in, t)

    scheduler = Scheduler(name, scheduler_config(REFERENCE[name].__name__, cfg))
    scheduler.sample(counted, x, scheduler.timesteps(steps), eta=eta,
                     generator=torch.Generator().manual_seed(seed) if seed is not None else None,
                     callback=lambda i, t, x: traj.append((i, x)))
    return ts, traj


def compare(name, cfg, steps, dtype, model=stand_in, eta=0.0, seed=None, label=""):
    x = torch.randn(2, 8, 5, 4, generator=torch.Generator().manual_seed(0), dtype=dtype)
    ts_ref, traj_ref = reference_run(name, cfg, steps, x, model, eta, seed)
    ts, traj = our_run(name, cfg, steps, x, model, eta, seed)
    assert ts == ts_ref, f"{name}: timesteps differ: {ts[:6]} vs {ts_ref[:6]}"
    assert [i for i, _ in traj] == [i for i, _ in traj_ref], f"{name}: reported steps differ"
    worst = 0.0
    for (i, a), (_, b) in zip(traj, traj_ref):
        _, rel, _ = errors(a, b)
        worst = max(worst, rel)
        assert rel <= TOL[dtype], f"{name} {label} step {i}: relative error {rel:.3e} > {TOL[dtype]:.0e}"
    print(f"[parity] {name} {label} {steps} steps {dtype}: worst step rel {worst:.3e}")
    return traj[-1][1], traj_ref[-1][1]


VARIANTS = [
    {},
    {"timestep_spacing": "trailing"},
    {"timestep_spacing": "linspace"},
    {"prediction_type": "v_prediction"},
    {"prediction_type": "sample"},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "steps_offset": 0},
    {"beta_schedule": "squaredcos_cap_v2", "set_alpha_to_one": True},
    {"num_train_timesteps": 600, "timestep_spacing": "trailing"},
    {"trained_betas": [0.0005 + 0.02 * (i / 299) ** 1.5 for i in range(300)], "num_train_timesteps": 300},
]


def _variants(name):
    for v in VARIANTS:
        if v.get("prediction_type") == "sample" and name in ("pndm", "euler_ancestral"):
            continue  # diffusers does not implement these
        yield v
    yield from CLASS_VARIANTS.get(name, [])


# Each class's own keys, at values that change the trajectory if ignored
CLASS_VARIANTS = {
    "ddim": [{"clip_sample": True, "prediction_type": "sample"},
             {"clip_sample": True, "clip_sample_range": 0.3, "prediction_type": "sample"},
             {"set_alpha_to_one": True, "steps_offset": 0}],
    "pndm": [{"skip_prk_steps": False}, {"set_alpha_to_one": True, "steps_offset": 0}],
    "heun": [{"clip_sample": True, "prediction_type": "sample"},
             {"clip_sample": True, "clip_sample_range": 0.3, "prediction_type": "sample"},
             {"use_karras_sigmas": True}, {"use_karras_sigmas": True, "timestep_spacing": "trailing"}],
    "lms": [{"use_karras_sigmas": True}, {"use_karras_sigmas": True, "timestep_spacing": "linspace"}],
    "euler": [{"use_karras_sigmas": True}, {"use_karras_sigmas": True, "sigma_min": 0.1, "sigma_max": 40.0},
              {"final_sigmas_type": "sigma_min"}, {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}],
    "dpmsolver++": [{"use_karras_sigmas": True},
                    {"solver_order": 1}, {"solver_type": "heun"}, {"final_sigmas_type": "sigma_min"},
                    {"final_sigmas_type": "sigma_min", "lower_order_final": False},
                    {"final_sigmas_type": "sigma_min", "euler_at_final": True, "lower_order_final": False},
                    {"timestep_spacing": "trailing", "solver_type": "heun", "use_karras_sigmas": True}],
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_stand_in_trajectories(name, dtype):
    for variant in _variants(name):
        cfg = {**PUBLISHED, **variant}
        if name == "pndm":
            cfg.setdefault("skip_prk_steps", True)
        for steps in (1, 3, 10, 50, 200):
            if cfg.get("skip_prk_steps") is False and steps < 4:
                continue
            eta = 0.7 if name == "ddim" else 0.0
            compare(name, cfg, steps, dtype, eta=eta, seed=11, label=str(variant))


@pytest.mark.parametrize("name", list(REFERENCE))
def test_a_thousand_steps(name):
    for spacing in ("trailing", "linspace"):
        cfg = {**PUBLISHED, "timestep_spacing": spacing, **({"skip_prk_steps": True} if name == "pndm" else {})}
        if name == "dpmsolver++" and spacing == "linspace":
            # 1001 points rounded onto 0..999 repeat timestep 500: diffusers returns NaN; we refuse
            with pytest.raises(ValueError, match="repeats a timestep"):
                our_run(name, cfg, 1000, torch.zeros(1, 8, 2, 2), stand_in)
            continue
        compare(name, cfg, 1000, torch.float64, eta=0.3 if name == "ddim" else 0.0, seed=5, label=spacing)
    # "leading" + steps_offset=1 (the published config) reaches timestep 1000: diffusers' DDIM/PNDM/DPM fail
    # with an IndexError there; we say what is wrong.
    cfg = {**PUBLISHED, **({"skip_prk_steps": True} if name == "pndm" else {})}
    with pytest.raises(ValueError, match=r"num_inference_steps=1000 .* timesteps outside 0..999"):
        our_run(name, cfg, 1000, torch.zeros(1, 8, 2, 2), stand_in)
    most = 998 if name == "dpmsolver++" else 999  # DPM spaces N + 1 points
    compare(name, cfg, most, torch.float64, eta=0.3 if name == "ddim" else 0.0, seed=5, label=f"published, {most}")


@pytest.mark.parametrize("steps", [10, 50, 200])
@pytest.mark.parametrize("name", list(REFERENCE))
def test_tiny_unet_trajectories(name, steps, tiny_ckpt):
    ref = UNet2DConditionModel.from_pretrained(tiny_ckpt / "unet").eval()
    ours = UNet.from_pretrained(tiny_ckpt / "unet")
    c = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    cfg = {**PUBLISHED, **({"skip_prk_steps": True} if name == "pndm" else {})}
    with torch.no_grad():
        # the reference scheduler drives the reference UNet; ours drives ours
        x = torch.randn(2, 8, 6, 4, generator=torch.Generator().manual_seed(0))
        ts_ref, traj_ref = reference_run(name, cfg, steps, x, lambda xi, t: ref(
            xi, t, encoder_hidden_states=None, class_labels=c).sample, eta=0.5, seed=3)
        ts, traj = our_run(name, cfg, steps, x, lambda xi, t: ours(xi, t, c), eta=0.5, seed=3)
    assert ts == ts_ref
    worst = max(errors(a, b)[1] for (_, a), (_, b) in zip(traj, traj_ref))
    print(f"[parity] {name} with the tiny UNet, {steps} steps: worst step rel {worst:.3e}")
    assert worst <= 1e-5


def test_a_skipped_step_is_detected():
    x = torch.randn(2, 8, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, traj_ref = reference_run("ddim", PUBLISHED, 10, x, stand_in)
    _, traj = our_run("ddim", PUBLISHED, 9, x, stand_in)
    assert_detects(traj[-1][1], traj_ref[-1][1], 1e-6, "ddim 9 steps against 10")


def test_ancestral_noise_uses_the_generator():
    x = torch.randn(1, 8, 5, 4, generator=torch.Generator().manual_seed(0))
    _, a = our_run("euler_ancestral", PUBLISHED, 10, x, stand_in, seed=1)
    _, b = our_run("euler_ancestral", PUBLISHED, 10, x, stand_in, seed=1)
    _, c = our_run("euler_ancestral", PUBLISHED, 10, x, stand_in, seed=2)
    assert torch.equal(a[-1][1], b[-1][1]) and not torch.equal(a[-1][1], c[-1][1])


def test_lms_coefficients_equal_the_references_quadrature():
    """Our float32 Gauss-Kronrod pass equals scipy.integrate.quad over the reference's float32 integrand."""
    from scipy import integrate

    for sigmas in ([14.6, 9.1, 5.3, 2.9, 1.4, 0.0], [0.0412, 0.0406, 0.0401, 0.0397, 0.0393, 0.0]):
        table = torch.tensor(sigmas, dtype=torch.float32)  # the reference's sigmas are float32 tensors
        for k in range(3, 5):
            for j in range(4):
                def basis(tau):
                    prod = 1.0
                    for m in range(4):
                        if m != j:
                            prod *= (tau - table[k - m]) / (table[k - j] - table[k - m])
                    return prod
                expected = integrate.quad(basis, table[k], table[k + 1], epsrel=1e-4)[0]
                assert lms_coefficient(table.double().tolist(), 4, k, j) == expected


def test_gauss_kronrod_is_exact_for_polynomials():
    rng = np.random.RandomState(0)
    for degree in (3, 17, 31):
        p = np.polynomial.Polynomial(rng.randn(degree + 1))
        assert gauss_kronrod_21(p, -0.3, 0.7) == pytest.approx(p.integ()(0.7) - p.integ()(-0.3), rel=1e-13, abs=1e-14)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, 1001, "10"])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_bad_step_counts(name, steps):
    with pytest.raises(ValueError, match="num_inference_steps"):
        Scheduler(name, scheduler_config(REFERENCE[name].__name__, PUBLISHED)).timesteps(steps)


def test_scheduler_from_checkpoint(tiny_ckpt):
    assert Scheduler.from_pretrained(tiny_ckpt / "scheduler").name == "ddim"
    pndm = Scheduler.from_pretrained(tiny_ckpt / "scheduler", "pndm")
    assert pndm.config.skip_prk_steps  # MusicLDM's PNDM is PLMS
    assert Scheduler.from_pretrained(tiny_ckpt / "scheduler", "heun").timesteps(10).evals_per_step == 2
    with pytest.raises(ValueError, match="unknown sampler 'dpm3'"):
        Scheduler.from_pretrained(tiny_ckpt / "scheduler", "dpm3")


@pytest.mark.parametrize("steps", [14, 15, 16])
def test_dpm_lower_order_final_boundary(steps):
    """diffusers ends DPM-Solver first-order when fewer than 15 steps remain (with a non-zero final sigma)."""
    compare("dpmsolver++", {**PUBLISHED, "final_sigmas_type": "sigma_min"}, steps, torch.float64,
            label="final sigma_min")


@pytest.mark.parametrize("name", ["ddim", "euler", "heun", "lms", "dpmsolver++"])
def test_a_plan_from_step_k_is_the_rest_of_the_plan(name):
    """Audio-to-audio starts part way down the schedule (Timesteps.from_step): the last N - k steps, still spaced for N.
    A sampler without a history across steps (DDIM, Euler, Heun) then continues a run from its state after k steps
    exactly as the whole run does; the multistep ones (LMS, DPM-Solver) start their history afresh there."""
    scheduler = Scheduler(name, scheduler_config(REFERENCE[name].__name__, PUBLISHED))
    plan, k = scheduler.timesteps(10), 4
    first = k * plan.evals_per_step  # Heun's plan lists t0, t1, t1, t2, t2, ...: evaluation 2k is t_k's predictor
    part = plan.from_step(k)
    assert (part.steps, part.spaced_for, part.evals_per_step) == (6, 10, plan.evals_per_step)
    assert torch.equal(part.timesteps, plan.timesteps[first:]) and part.init_scale is plan.init_scale
    assert (part.sigmas is None) == (plan.sigmas is None) and (part.sigmas is None or torch.equal(part.sigmas,
                                                                                                   plan.sigmas[first:]))
    assert part.scale_input == plan.scale_input
    x = torch.randn(2, 8, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    states = []
    whole = scheduler.sample(stand_in, x, plan, callback=lambda i, t, x: states.append(x))
    rest = scheduler.sample(stand_in, x, part, init=states[k - 1])
    assert torch.equal(rest, whole) == (name in ("ddim", "euler", "heun")), name
    whole_again = plan.from_step(0)  # strength 1: every step
    assert whole_again.steps == 10 and torch.equal(whole_again.timesteps, plan.timesteps)
    for bad in (-1, 10):
        with pytest.raises(ValueError, match=f"from_step: {bad} is not a step of a 10-step plan"):
            plan.from_step(bad)


@pytest.mark.parametrize("name", list(REFERENCE))
def test_timesteps_have_the_references_dtype(name):
    """The model sees t as diffusers hands it: int64 for DDIM, PNDM and DPM-Solver, float32 for the sigma samplers
    (the UNet's time embedding casts either, but a compiled graph or an exported one sees the dtype)."""
    for spacing in ("leading", "linspace", "trailing"):
        cfg = {**PUBLISHED, "timestep_spacing": spacing}
        ref = REFERENCE[name].from_config(cfg)
        ref.set_timesteps(10)
        ours = Scheduler(name, scheduler_config(REFERENCE[name].__name__, cfg)).timesteps(10).timesteps
        assert ours.dtype == ref.timesteps.dtype, (name, spacing, ours.dtype, ref.timesteps.dtype)


def test_sigma_to_t_at_the_ends_and_between():
    """The inverse of the sigma table, for many sigmas at once: a table entry is its own timestep, its largest
    one T - 1 (and anything beyond, clamped), a geometric midpoint half way."""
    table = Scheduler("euler", scheduler_config("EulerDiscreteScheduler", PUBLISHED)).schedule.sigma_table()
    sigmas = np.array([table[0], table[10], np.sqrt(table[10] * table[11]), table[-1], 2 * table[-1]], np.float64)
    t = sigma_to_t(sigmas, np.log(table))
    assert t.shape == (5,) and np.allclose(t, [0, 10, 10.5, len(table) - 1, len(table) - 1], rtol=0, atol=1e-3)
