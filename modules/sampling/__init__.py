"""Sampling: noise tables and denoisers (`denoiser`), schedules, samplers and seeded noise (`noise`).

Typical use (see each module's docstring)::

    from modules.sampling import denoiser, noise, samplers

    schedule = denoiser.DiscreteSchedule.sd_default()
    model = denoiser.CFGDenoiser(denoiser.EpsDenoiser(apply_model, schedule), cond, uncond, cfg_scale=7.0)
    info, fused = samplers.resolve_sampler_name("DPM++ 2M Karras")
    sigmas = samplers.sigmas_for(info, fused or "Automatic", schedule, steps=20)
    rng = noise.ImageRNG((4, 64, 64), seeds=[1234])
    x = rng.first() * sigmas[0]
    latents = info.fn(model, x, sigmas, noise_sampler=rng.noise_sampler(info, x, sigmas), **info.defaults,
                      **samplers.plan_kwargs(info, schedule, img2img=False))

DDIM, DDIM CFG++, PLMS and UniPC run in A1111's timestep space (`samplers_timesteps`); LCM samples on
its own table (`samplers.sampler_table`).
"""
