"""What one generation is asked to do: `Options`, one frozen object, and its checks.

`MusicLDMPipeline.__call__` packs its arguments (diffusers' names and defaults) into an Options and
hands it to `generate`; the entry points build one from a request (app/prepare.py). Variants are made with
`dataclasses.replace`. The checks come in three layers, each run as early as it can be:

* `Options.check()` needs no model and reads no file: types, ranges, the arguments' consistency.
* `read_input()` reads the input audio of audio-to-audio, once, and checks what needs its length;
  `conditioning.read()` reads the audio prompts of a blend or a schedule, once.
* `plan()` adds what only the checkpoint can tell: the default length, the frames a length rounds
  to, the sampler's step counts, embedding widths, the latent shape. It takes the checkpoint's
  `Geometry` and sampler, never the pipeline.

Every message names the argument (errors.arg: its `pipe(...)` name, which the command line, a batch line
or the page renames to its own once, where it took the value), its value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from . import conditioning
from .audio_frontend import CROPS
from .audio_input import load_audio
from .conditioning import Conditioning
from .geometry import Geometry
from .errors import RequestError, arg
from .checks import (check_attention_kwargs, check_edit, check_int, check_noise, check_number, check_prompts)
from .placement import check_memory
from .samplers import Timesteps, Scheduler, check_sampler

OUTPUT_TYPES = ("np", "pt", "latent")
WINDOWS = (None, "auto", "whole", "windowed")
AUDIO_RATE = 16000  # MusicLDM's audio rate: an input is resampled to it
MIN_INPUT_SECONDS = 0.04  # the shortest input: one latent frame (4 mel frames of 10 ms)
Generator = Union[torch.Generator, List[torch.Generator], None]


@dataclass(frozen=True)
class Options:
    """The arguments of `MusicLDMPipeline.__call__`: diffusers' first, with its defaults, then ours."""

    prompt: Union[str, List[str], None] = None  # what the music should sound like; a list: one row each
    audio_length_in_s: Optional[float] = None  # seconds; None: the UNet's trained length (10.24 s)
    num_inference_steps: int = 200  # sampler steps
    guidance_scale: float = 2.0  # classifier-free guidance g; it runs only above 1
    negative_prompt: Union[str, List[str], None] = None  # what to steer away from ("" when not given)
    num_waveforms_per_prompt: int = 1  # takes per prompt; several are ranked by CLAP, best first
    eta: float = 0.0  # DDIM's share of fresh noise per step, 0 (deterministic) to 1
    generator: Generator = None  # one, one per take (as diffusers), or one per prompt (each draws its takes)
    latents: Optional[torch.Tensor] = None  # the initial noise (takes, 8, frames/4, 16), instead of drawing it
    prompt_embeds: Optional[torch.Tensor] = None  # (prompts, 512) CLAP text vectors instead of prompt
    negative_prompt_embeds: Optional[torch.Tensor] = None  # the same for the negative prompt
    return_dict: bool = True  # an AudioPipelineOutput, else a tuple (audios,)
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None  # (step, t, latents)
    callback_steps: int = 1  # call it every this many steps
    cross_attention_kwargs: Optional[Dict[str, Any]] = None  # only {"scale": s}: a LoRA weight, no effect
    output_type: str = "np"  # "np" or "pt" waveforms, or "latent" (the denoised latents, unscaled)
    # beyond the reference
    rank_within_prompt: bool = False  # rank each prompt's own takes (the reference ranks against all)
    crop: str = "random"  # ranking's crop of takes over 10 s: "random" (numpy's global RNG), "start", "center"
    # progress(stage, done, total): "reading the input" (audio-to-audio), "encoding the prompt", "encoding the
    # input" (windows, audio-to-audio), "denoising"
    # (steps), "decoding" and "vocoding" (windows), "ranking takes", in that order; each as it goes. On the
    # windowed path each step also tells its windows as "denoising: windows" (a detail, not a stage)
    progress: Optional[Callable[[str, int, int], None]] = None
    sampler: Optional[str] = None  # this call's sampler by name; None: the pipeline's scheduler
    loop: bool = False  # a seamless loop: circular windows at every stage, length in whole 40 ms frames
    # None: the reference's whole-latent path at every length (a loop: windows; audio-to-audio: "auto");
    # "auto": the whole latent up to the trained length, windows beyond; "whole"; "windowed"
    window: Optional[str] = None
    audio: Any = None  # audio-to-audio input: a file path, or an array (samples,) / (channels, samples)
    audio_sampling_rate: Optional[int] = None  # the rate of an array `audio`
    strength: Optional[float] = None  # SDEdit: 0 (the input's round trip) to 1 (only its length kept)
    inpaint: Optional[Tuple[float, float]] = None  # (start, end) seconds of the input to regenerate
    extend: Optional[float] = None  # seconds to continue the input by
    return_mels: bool = False  # also return the mels the VAE decoded (N, frames, bins), in .audios' order
    # the condition beyond one text prompt (conditioning.py, audio_prompt.py)
    prompt_weights: Optional[Sequence[float]] = None  # a weight per prompt: the prompts blended into one row
    audio_prompt: Any = None  # "music like this clip": a file path, or an array at audio_sampling_rate
    audio_prompt_weight: float = 1.0  # the clip's weight beside the texts' (weights are relative to their sum)
    blend: str = "linear"  # how parts mix: "linear" (weighted mean, made unit length) or "slerp" (two parts)
    schedule: Optional[Sequence[Tuple[float, Any]]] = None  # [(seconds, a text or a blend mapping), ...]
    travel: Optional[float] = None  # seconds of each schedule transition (None: one denoising window, 10.24 s)

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs only above 1, as in the reference (at 1 it would change nothing)."""
        return self.guidance_scale > 1.0

    def negative_prompts(self, n: int) -> List[str]:
        """The negative prompt for each of `n` prompts ("" where none is given)."""
        negative = self.negative_prompt
        return [""] * n if negative is None else [negative] * n if isinstance(negative, str) else list(negative)

    def check(self) -> int:
        """Every check that needs no model and reads no file; returns the number of prompts."""
        if self.audio_length_in_s is not None:
            check_number(arg("audio_length_in_s"), self.audio_length_in_s, minimum=0, strict=True)
        check_int(arg("num_inference_steps"), self.num_inference_steps, minimum=1)
        check_number(arg("guidance_scale"), self.guidance_scale, minimum=0)
        check_int(arg("num_waveforms_per_prompt"), self.num_waveforms_per_prompt, minimum=1)
        check_number("eta", self.eta, minimum=0, maximum=1)  # DDIM's variance goes negative past 1: NaN audio
        check_int("callback_steps", self.callback_steps, minimum=1)
        for name in ("callback", "progress"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise RequestError(f"{name} must be a function or None, got {type(getattr(self, name)).__name__}")
        for name, value, allowed in (("return_dict", self.return_dict, (True, False)),
                                     ("return_mels", self.return_mels, (True, False)),
                                     ("output_type", self.output_type, OUTPUT_TYPES), ("crop", self.crop, CROPS),
                                     (arg("window"), self.window, WINDOWS), (arg("loop"), self.loop, (True, False))):
            if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
                words = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
                raise RequestError(f"{name} must be {words}, got {value!r}")
        if self.sampler is not None:
            check_sampler(self.sampler, arg("sampler"))
        check_attention_kwargs(self.cross_attention_kwargs)
        prompts = check_prompts(self)
        conditioning.check(self)
        check_noise(self, prompts)
        check_edit(self)
        return prompts


class Run(NamedTuple):
    """Options made concrete for one checkpoint: what `generate` carries out."""

    takes: int  # rows generated: prompts x num_waveforms_per_prompt
    seconds: float  # the audio length returned
    frames: int  # mel frames generated (the length rounded up to whole latent frames)
    scheduler: Scheduler  # the sampler of this call
    sampling: Timesteps  # its timesteps and sigmas for the asked steps
    windowed: bool  # denoise, decode and vocode in windows of the trained length (longform.py)
    wave: Optional[torch.Tensor] = None  # audio-to-audio: the input, 16 kHz mono
    input_frames: int = 0  # audio-to-audio: mel frames of the input (the rest is extension)
    loop: bool = False  # a seamless loop: circular windows at every stage
    geometry: Optional[Geometry] = None  # the checkpoint's lengths and shapes, computed once per call
    conditioning: Optional[Conditioning] = None  # blends or a schedule, their audio prompts read (conditioning.py)


def read_input(o: Options) -> Optional[torch.Tensor]:
    """The input audio of audio-to-audio as (samples,) 16 kHz mono, read once; None without one.
    Its length and rate are bounded (audio_input.load_audio), the resampling reported as the stage
    "reading the input"; an inpaint span is checked against its length here."""
    if o.audio is None:
        return None
    report = o.progress or (lambda stage, done, total: None)
    report("reading the input", 0, 1)  # shown whether or not it is resampled
    wave = load_audio(o.audio, o.audio_sampling_rate, AUDIO_RATE, arg("audio"), MIN_INPUT_SECONDS,
                      lambda done, total: report("reading the input", done, total))
    report("reading the input", 1, 1)
    seconds = len(wave) / AUDIO_RATE
    span = o.inpaint
    if span is not None and not 0 <= span[0] < span[1] <= seconds:
        raise RequestError(f"{arg('inpaint')} must be a span (start, end) in seconds with 0 <= start < end <= "
                           f"{seconds:.2f} (the input's length), got {span!r}")
    return wave


def plan(o: Options, prompts: int, geometry: Geometry, scheduler: Scheduler, wave: Optional[torch.Tensor],
         embed_width: Optional[int], conditions: Optional[Conditioning] = None) -> Run:
    """What needs the checkpoint, for checked options of `prompts` prompts, their input `wave` and their
    conditions as read: the checkpoint's geometry, its sampler, the CLAP width its UNet takes (None: any)."""
    takes = prompts * o.num_waveforms_per_prompt
    g, seconds, input_frames = geometry, o.audio_length_in_s, 0
    if seconds is None:
        seconds = g.default_seconds()
    if seconds < g.min_seconds:
        raise RequestError(f"{arg('audio_length_in_s')} must be at least {g.min_seconds} s "
                           f"(one latent frame), got {seconds}")
    if g.mel_bins % g.vae_factor:
        raise ValueError(f"the vocoder's {g.mel_bins} mel bins are not divisible by the VAE scale factor "
                         f"{g.vae_factor}")
    if wave is not None:  # the input sets the length
        input_frames = g.input_frames(len(wave))
        seconds = len(wave) / AUDIO_RATE + (o.extend or 0.0)
        if g.sampling_rate != AUDIO_RATE:
            raise RequestError(f"audio-to-audio reads its input at MusicLDM's {AUDIO_RATE} Hz; this checkpoint's "
                               f"vocoder is at {g.sampling_rate} Hz")
        if scheduler.name == "pndm":
            raise RequestError("audio-to-audio starts part way down the schedule, which PNDM's warm-up cannot; "
                               "use another sampler (ddim, the default, or lms, euler, heun, dpmsolver++)")
    frames = g.frames(seconds)
    if o.loop:  # a loop is a whole number of latent frames: no trim may cut its seam
        seconds = frames * g.hop_seconds
    trained = g.trained_frames or frames
    window = o.window or ("auto" if wave is not None else "whole")  # beyond the reference, windows past training
    scheduled = o.schedule is not None  # each window conditioned on the schedule at its centre
    if scheduled and o.window == "whole":
        raise RequestError(f"{arg('schedule')} conditions each window of the windowed path: leave {arg('window')} "
                           "out or make it 'windowed' or 'auto'")
    windowed = o.loop or scheduled or window == "windowed" or (window == "auto" and frames > trained)
    conditioning.check_schedule_length(conditions, float(frames * g.hop_seconds if o.loop else seconds))
    if scheduled and conditions.travel is None:  # one denoising window
        conditions = conditions._replace(travel=g.window("denoising")[0] * g.frame_seconds)
    try:  # a step count this sampler's spacing can take (its messages name num_inference_steps)
        sampling = scheduler.timesteps(o.num_inference_steps)
    except ValueError as e:
        raise RequestError(str(e).replace("num_inference_steps", arg("num_inference_steps"), 1),
                           "num_inference_steps") from None
    for name in ("prompt_embeds", "negative_prompt_embeds"):
        embeds = getattr(o, name)
        if embeds is not None and embed_width is not None and embeds.shape[1] != embed_width:
            raise RequestError(f"{name} must be a (batch, {embed_width}) tensor, got {tuple(embeds.shape)}")
    shape = g.latent_shape(takes, frames)
    if o.latents is not None and tuple(o.latents.shape) != shape:
        raise RequestError(f"latents has shape {tuple(o.latents.shape)}, expected {shape} for {takes} takes "
                           f"of {seconds} s")
    return Run(takes=takes, seconds=float(seconds), frames=frames, scheduler=scheduler, sampling=sampling,
               windowed=windowed, wave=wave, input_frames=input_frames, loop=o.loop, geometry=g, conditioning=conditions)


def plan_call(o: Options, configs: tuple, scheduler: Scheduler, device: torch.device, vae_slicing: bool = False,
              checked: Optional[tuple] = None) -> Run:
    """Every check of `o` and what a checkpoint makes of it, from its (UNet, VAE, vocoder) configs and
    sampler alone, the memory estimate included: the pipeline's own plan, and the entry points' before
    the weights load. checked: (prompts, wave, conditions), when the caller has run `o.check`, `read_input`
    and `conditioning.read` already."""
    geometry = Geometry.from_configs(*configs)
    prompts, wave, conditions = checked or (o.check(), read_input(o), conditioning.read(o))
    run = plan(o, prompts, geometry=geometry, scheduler=scheduler.with_sampler(o.sampler), wave=wave,
               embed_width=configs[0].projection_class_embeddings_input_dim, conditions=conditions)
    trained, windows = geometry.trained_frames or run.frames, f"{arg('window')}=windowed"
    check_memory(configs, device, takes=run.takes, frames=run.frames, guided=o.guided, seconds=run.seconds,
                 vae_slicing=vae_slicing, window=trained if run.windowed else None,
                 way_out=None if run.windowed else (trained, windows),
                 input_samples=0 if run.wave is None else len(run.wave),
                 length="audio_length_in_s" if run.wave is None else "extend" if o.extend else "audio")
    return run
