"""Schedules: shape properties, and each one against its published formula computed here in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special

from modules.sampling import schedules as S
from modules.sampling.denoiser import DiscreteSchedule, LCMSchedule

SD = DiscreteSchedule.sd_default()
SDXL = DiscreteSchedule.sd_default(family="sdxl")
SMAX, SMIN = SD.sigma_max, SD.sigma_min
LOG_SIGMAS = SD.log_sigmas.double().numpy()


def at_t(t):
    """sigma at fractional timesteps: linear interpolation of the log-sigma table (independent of the code)."""
    return np.exp(np.interp(np.asarray(t, dtype=np.float64), np.arange(1000), LOG_SIGMAS))


def close(actual: torch.Tensor, expected, rtol=2e-5, atol=1e-6):
    assert actual.dtype == torch.float32
    np.testing.assert_allclose(actual.double().numpy(), np.asarray(expected, dtype=np.float64), rtol=rtol, atol=atol)


def test_labels_are_a1111s_in_order():
    assert list(S.SCHEDULES) == ["Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                                 "Align Your Steps", "Simple", "Normal", "DDIM", "Beta"]


@pytest.mark.parametrize("label", list(S.SCHEDULES))
@pytest.mark.parametrize("steps", [2, 8, 10, 25])
def test_properties(label, steps):
    sigmas = S.SCHEDULES[label](SD, steps)
    assert sigmas.dtype == torch.float32 and sigmas.ndim == 1
    assert torch.all(sigmas[:-1] > sigmas[1:]), "strictly decreasing"
    assert torch.all(sigmas >= 0)
    if label == "DDIM":
        assert len(sigmas) == len(range(1, 1000, 1000 // steps)) + 1  # A1111: more than steps+1 if steps ∤ 1000
    else:
        assert len(sigmas) == steps + 1
    if label == "KL Optimal":
        assert float(sigmas[-1]) == pytest.approx(SMIN, rel=1e-5)  # A1111 appends no 0 here
    else:
        assert sigmas[-1] == 0
    if label in ("Uniform", "Normal", "SGM Uniform", "Karras", "Exponential", "Polyexponential", "KL Optimal",
                 "Simple", "Beta"):
        assert float(sigmas[0]) == pytest.approx(SMAX, rel=2e-6)


def test_karras_formula():
    n, rho = 12, 7.0
    ramp = np.linspace(0, 1, n)
    expected = (SMAX ** (1 / rho) + ramp * (SMIN ** (1 / rho) - SMAX ** (1 / rho))) ** rho
    close(S.karras(SD, n), np.append(expected, 0))
    close(S.karras(SD, n, rho=3.0)[:-1], (SMAX ** (1 / 3) + ramp * (SMIN ** (1 / 3) - SMAX ** (1 / 3))) ** 3)


def test_exponential_and_polyexponential_formulas():
    n = 9
    expected = np.exp(np.linspace(math.log(SMAX), math.log(SMIN), n))
    close(S.exponential(SD, n), np.append(expected, 0))
    close(S.polyexponential(SD, n), np.append(expected, 0))  # rho = 1 is exponential
    ramp = np.linspace(1, 0, n) ** 2
    close(S.polyexponential(SD, n, rho=2.0)[:-1], np.exp(ramp * (math.log(SMAX) - math.log(SMIN)) + math.log(SMIN)))


def test_uniform_normal_sgm_in_timestep_space():
    n = 7
    close(S.uniform(SD, n), np.append(at_t(np.linspace(999, 0, n)), 0))
    close(S.normal(SD, n), np.append(at_t(np.linspace(999, 0, n)), 0), rtol=5e-5)
    close(S.sgm_uniform(SD, n), np.append(at_t(np.linspace(999, 0, n + 1)[:-1]), 0), rtol=5e-5)


def test_kl_optimal_formula():
    n = 10
    i = np.arange(n + 1)
    expected = np.tan(i / n * math.atan(SMIN) + (1 - i / n) * math.atan(SMAX))
    close(S.kl_optimal(SD, n), expected, rtol=1e-5)


def test_align_your_steps_published_tables():
    sd15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
    sdxl = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
    close(S.align_your_steps(SD, 11), sd15 + [0])
    close(S.align_your_steps(SDXL, 11), sdxl + [0])
    for table, schedule in ((sd15, SD), (sdxl, SDXL)):
        for n in (4, 10, 20):
            positions = np.arange(n) * (len(table) - 1) / (n - 1)  # log-linear along the table
            expected = np.exp(np.interp(positions, np.arange(len(table)), np.log(table)))
            close(S.align_your_steps(schedule, n), np.append(expected, 0), rtol=1e-5)


def test_simple_and_ddim_pick_table_entries():
    n = 8
    close(S.simple(SD, n), [float(SD.sigmas[999 - int(i * 1000 / n)]) for i in range(n)] + [0])
    timesteps = np.arange(0, 1000, 1000 // n) + 1  # A1111's CompVis timesteps 1, 126, ..., 876
    close(S.ddim(SD, n), [float(SD.sigmas[t]) for t in timesteps[::-1]] + [0])
    assert len(S.ddim(SD, 7)) == 9  # 1000 // 7 = 142 → 8 timesteps, as in A1111


def test_beta_quantiles():
    n = 10
    sigmas = S.beta(SD, n).double().numpy()[:-1]
    q = (sigmas - SMIN) / (SMAX - SMIN)
    # the regularised incomplete beta function (the CDF) undoes the ppf: CDF(q_i) = 1 - i/(n-1)
    np.testing.assert_allclose(special.betainc(0.6, 0.6, q), 1 - np.arange(n) / (n - 1), atol=1e-5)


def test_lcm_automatic_schedule():
    lcm = S.lcm(SD, 4)
    table = LCMSchedule(SD)
    expected = np.exp(np.interp(np.linspace(49, 0, 4), np.arange(50), table.log_sigmas.double().numpy()))
    close(lcm, np.append(expected, 0), rtol=1e-5)
    assert float(lcm[0]) == pytest.approx(SMAX, rel=1e-5)
    assert float(lcm[-2]) == pytest.approx(float(SD.sigmas[19]), rel=1e-5)


def test_steps_must_be_positive():
    with pytest.raises(ValueError, match="positive integer"):
        S.karras(SD, 0)


def test_resolve_schedule_name():
    assert S.resolve_schedule_name("Karras") == "Karras"
    assert S.resolve_schedule_name("sgm_uniform") == "SGM Uniform"
    assert S.resolve_schedule_name("SGMUniform") == "SGM Uniform"
    assert S.resolve_schedule_name("align your steps") == "Align Your Steps"
    assert S.resolve_schedule_name("automatic") == "Automatic"
    with pytest.raises(ValueError) as err:
        S.resolve_schedule_name("Karas")
    assert "'Karas'" in str(err.value) and "Karras" in str(err.value)
