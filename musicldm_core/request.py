"""One generation request: the arguments of `pipe(...)` and of the command line, checked where they enter.

`Request.check()` needs no model: types, ranges and the consistency of the arguments with each
other, so the command line refuses a bad request before it loads anything. `Request.plan(pipe)`
adds what only the checkpoint can tell (the default length, the frames a length rounds to, the
sampler's step counts, embedding widths, the latent shape, memory) and returns the Run the
pipeline carries out. Every message names the argument (or, through `names`, the command-line flag),
its value and what is allowed.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple, Union

import torch

from .audio_frontend import CROPS
from .placement import check_memory
from .samplers import Plan as SamplingPlan

if TYPE_CHECKING:
    from .pipeline import MusicLDMPipeline

OUTPUT_TYPES = ("np", "pt", "latent")
WINDOWS = ("auto", "whole", "windowed")  # auto: the whole latent up to the trained length, windows beyond
AUDIO_RATE = 16000  # MusicLDM's audio rate: the input is resampled to it


def check_number(name: str, value, *, minimum: float, strict: bool = False, maximum: Optional[float] = None) -> float:
    """A finite real number >= minimum (> minimum when strict, <= maximum if given), else a ValueError naming it."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum) or (maximum is not None and value > maximum):
        bound = f"{'>' if strict else '>='} {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def check_int(name: str, value, *, minimum: int, maximum: Optional[int] = None) -> int:
    """An integer in [minimum, maximum], else a ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return int(value)


def check_text(name: str, text: str) -> None:
    """Text must be valid Unicode: a lone surrogate (bytes that were not UTF-8, e.g. an argument typed
    in a shell with another locale) is refused rather than silently replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode at character {e.start} ({text[e.start:e.end]!r}): "
                         "was it typed in a non-UTF-8 locale? Re-encode it as UTF-8") from None


def check_prompt(prompt, name: str = "prompt") -> int:
    """A non-empty string or non-empty list of them, each valid Unicode with some text; returns how many."""
    if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and (
            not prompt or not all(isinstance(p, str) for p in prompt))):
        raise ValueError(f"{name} must be a string or a non-empty list of strings, got {type(prompt).__name__}")
    texts = [prompt] if isinstance(prompt, str) else prompt
    for i, p in enumerate(texts):
        item = name if isinstance(prompt, str) else f"{name}[{i}]"
        if not p.strip():
            raise ValueError(f"{item} is empty or only whitespace")
        check_text(item, p)
    return len(texts)


def check_embeds(name: str, embeds) -> int:
    """A (rows >= 1, width) floating-point tensor of finite values; returns the rows."""
    if not torch.is_tensor(embeds) or embeds.dim() != 2:
        shape = tuple(embeds.shape) if torch.is_tensor(embeds) else type(embeds).__name__
        raise ValueError(f"{name} must be a (batch, width) tensor, got {shape}")
    if embeds.shape[0] == 0:
        raise ValueError(f"{name} has no rows: give at least one embedding")
    if not embeds.is_floating_point() or not torch.isfinite(embeds).all():
        raise ValueError(f"{name} must hold finite floating-point values")
    return embeds.shape[0]


class Run(NamedTuple):
    """A checked request, made concrete for one checkpoint."""

    seconds: float  # the audio length returned
    frames: int  # mel frames generated (the length rounded up to whole latent frames)
    sampling: SamplingPlan  # the sampler's timesteps and sigmas
    windowed: bool  # denoise, decode and vocode in windows of the trained length (longform.py)
    input_frames: int = 0  # audio-to-audio: mel frames of the input (the rest is extension)


@dataclass
class Request:
    """The arguments of `MusicLDMPipeline.__call__` (see there) that shape the generation."""

    prompt: Union[str, List[str], None] = None
    audio_length_in_s: Optional[float] = None
    num_inference_steps: int = 200
    guidance_scale: float = 2.0
    negative_prompt: Union[str, List[str], None] = None
    num_waveforms_per_prompt: int = 1
    eta: float = 0.0
    generator: Union[torch.Generator, List[torch.Generator], None] = None
    latents: Optional[torch.Tensor] = None
    prompt_embeds: Optional[torch.Tensor] = None
    negative_prompt_embeds: Optional[torch.Tensor] = None
    callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None
    callback_steps: Optional[int] = 1
    cross_attention_kwargs: Optional[Dict[str, Any]] = None
    output_type: Optional[str] = "np"
    return_dict: bool = True
    crop: str = "random"
    progress: Optional[Callable[[int, int], None]] = None
    loop: bool = False
    window: str = "auto"
    audio: Any = None
    audio_sampling_rate: Optional[int] = None
    strength: Optional[float] = None
    inpaint: Optional[Tuple[float, float]] = None
    extend: Optional[float] = None
    names: Mapping[str, str] = field(default_factory=dict, repr=False)  # argument -> name in messages (CLI flags)
    wave: Optional[torch.Tensor] = field(default=None, init=False, repr=False)  # the input audio, 16 kHz mono

    def negative_prompts(self, n: int) -> List[str]:
        """The negative prompt for each of `n` prompts ("" where none is given)."""
        negative = self.negative_prompt
        return [""] * n if negative is None else [negative] * n if isinstance(negative, str) else list(negative)

    @property
    def guided(self) -> bool:
        """Classifier-free guidance runs only above 1, as in the reference (at 1 it would change nothing)."""
        return self.guidance_scale > 1.0

    def _name(self, argument: str) -> str:
        return self.names.get(argument, argument)

    def check(self) -> int:
        """Every check that needs no model; returns the number of prompts."""
        n = self._name
        if self.audio_length_in_s is not None:
            check_number(n("audio_length_in_s"), self.audio_length_in_s, minimum=0, strict=True)
        check_int(n("num_inference_steps"), self.num_inference_steps, minimum=1)
        check_number(n("guidance_scale"), self.guidance_scale, minimum=0)
        check_int(n("num_waveforms_per_prompt"), self.num_waveforms_per_prompt, minimum=1)
        check_number("eta", self.eta, minimum=0, maximum=1)  # DDIM's variance goes negative past 1: NaN audio
        check_int("callback_steps", self.callback_steps, minimum=1)
        for name in ("callback", "progress"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise ValueError(f"{name} must be a function or None, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.return_dict, bool):
            raise ValueError(f"return_dict must be True or False, got {self.return_dict!r}")
        if self.output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {self.output_type!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop must be 'random', 'start' or 'center', got {self.crop!r}")
        if self.cross_attention_kwargs is not None:
            if not isinstance(self.cross_attention_kwargs, dict):
                raise ValueError(f"cross_attention_kwargs must be a dict or None, got {self.cross_attention_kwargs!r}")
            # diffusers reads only "scale", and only to weight LoRA layers; with no LoRA it changes nothing.
            unknown = set(self.cross_attention_kwargs) - {"scale"}
            if unknown:
                raise ValueError(f"cross_attention_kwargs: unsupported key(s) {sorted(unknown)}; only 'scale' "
                                 "(a LoRA weight, which has no effect without LoRA layers) is accepted")
        prompts = self._check_prompts()
        self._check_noise(prompts * self.num_waveforms_per_prompt, prompts)
        self._check_audio()
        return prompts

    def _check_audio(self) -> None:
        """Long form, loops and audio-to-audio: values, combinations, and the input audio itself."""
        n = self._name
        if not isinstance(self.loop, bool):
            raise ValueError(f"{n('loop')} must be True or False, got {self.loop!r}")
        if self.window not in WINDOWS:
            raise ValueError(f"{n('window')} must be one of {', '.join(map(repr, WINDOWS))}, got {self.window!r}")
        if self.loop and self.window == "whole":
            raise ValueError(f"{n('loop')} needs the windowed path (circular windows); not window='whole'")
        edits = [name for name in ("strength", "inpaint", "extend") if getattr(self, name) is not None]
        if self.audio is None:
            if edits:
                raise ValueError(f"{n(edits[0])} needs an input: give {n('audio')}")
            return
        if len(edits) > 1:
            raise ValueError(f"give one of {n('strength')}, {n('inpaint')} or {n('extend')}, not several")
        if self.loop or self.audio_length_in_s is not None:
            other = n("loop") if self.loop else n("audio_length_in_s")
            raise ValueError(f"{other} cannot be used with {n('audio')}: the input sets the length")
        if self.strength is not None:
            check_number(n("strength"), self.strength, minimum=0, maximum=1)
        if self.extend is not None:
            check_number(n("extend"), self.extend, minimum=0, strict=True)
        if self.wave is None:
            from .audio_frontend import load_audio

            self.wave = load_audio(self.audio, self.audio_sampling_rate, AUDIO_RATE, n("audio"))
        seconds = len(self.wave) / AUDIO_RATE
        if self.inpaint is not None:
            span = self.inpaint
            ok = isinstance(span, (tuple, list)) and len(span) == 2 and all(
                not isinstance(v, bool) and isinstance(v, numbers.Real) and math.isfinite(v) for v in span)
            if not ok or not 0 <= span[0] < span[1] <= seconds:
                raise ValueError(f"{n('inpaint')} must be a span (start, end) in seconds with 0 <= start < end <= "
                                 f"{seconds:.2f} (the input's length), got {span!r}")

    def _check_prompts(self) -> int:
        prompt, negative, embeds, negative_embeds = (self.prompt, self.negative_prompt, self.prompt_embeds,
                                                     self.negative_prompt_embeds)
        if prompt is not None and embeds is not None:
            raise ValueError("give either prompt or prompt_embeds, not both")
        if prompt is None and embeds is None:
            raise ValueError("give prompt (a string or a list of strings) or prompt_embeds")
        prompts = check_prompt(prompt) if prompt is not None else check_embeds("prompt_embeds", embeds)
        if negative is not None and negative_embeds is not None:
            raise ValueError("give either negative_prompt or negative_prompt_embeds, not both")
        if negative is not None:
            name = self._name("negative_prompt")
            if prompt is not None and type(prompt) is not type(negative):
                raise TypeError(f"{name} must have the same type as prompt ({type(prompt).__name__}), "
                                f"got {type(negative).__name__}")
            if not isinstance(negative, (str, list)) or not all(isinstance(p, str) for p in negative):
                raise ValueError(f"{name} must be a string or a list of strings, got {type(negative).__name__}")
            if isinstance(negative, list) and len(negative) != prompts:
                raise ValueError(f"{name} has {len(negative)} entries but prompt has {prompts}")
            for i, p in enumerate([negative] if isinstance(negative, str) else negative):
                check_text(name if isinstance(negative, str) else f"{name}[{i}]", p)
        if negative_embeds is not None:
            check_embeds("negative_prompt_embeds", negative_embeds)
            if embeds is not None and embeds.shape != negative_embeds.shape:
                raise ValueError(f"prompt_embeds {tuple(embeds.shape)} and negative_prompt_embeds "
                                 f"{tuple(negative_embeds.shape)} must have the same shape")
            if negative_embeds.shape[0] != prompts:
                raise ValueError(f"negative_prompt_embeds has {negative_embeds.shape[0]} rows but there are "
                                 f"{prompts} prompts")
        return prompts

    def _check_noise(self, takes: int, prompts: int) -> None:
        generator, latents = self.generator, self.latents
        if isinstance(generator, list):
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError("generator must be a torch.Generator or a list of them")
            if len(generator) not in (1, takes):
                raise ValueError(f"generator: a list of {len(generator)} generators for {takes} takes "
                                 f"({prompts} prompts x {self.num_waveforms_per_prompt}); give one, or one per take")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        if latents is not None:
            if not torch.is_tensor(latents):
                raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
            if not latents.is_floating_point():
                raise ValueError(f"latents must be a floating-point tensor, got {latents.dtype}")
            if not torch.isfinite(latents).all():
                raise ValueError("latents contains NaN or infinite values")

    def plan(self, pipe: "MusicLDMPipeline") -> Run:
        """check(), then what needs the checkpoint; the Run of the generation."""
        prompts = self.check()
        takes = prompts * self.num_waveforms_per_prompt
        hop_seconds = pipe.vocoder.config.hop_length / pipe.sampling_rate  # 160 / 16000 s per mel frame
        f = pipe.vae_scale_factor
        seconds = self.audio_length_in_s
        if seconds is None:
            if pipe.unet.config.sample_size is None:
                raise ValueError("audio_length_in_s must be given: unet/config.json has no sample_size to take "
                                 "the default length from")
            seconds = pipe.unet.config.sample_size * f * hop_seconds
        if seconds < hop_seconds * f:
            raise ValueError(f"{self._name('audio_length_in_s')} must be at least {hop_seconds * f} s (one latent "
                             f"frame), got {seconds}")
        if pipe.vocoder.config.model_in_dim % f:
            raise ValueError(f"the vocoder's {pipe.vocoder.config.model_in_dim} mel bins are not divisible by the "
                             f"VAE scale factor {f}")
        input_frames = 0
        if self.wave is not None:  # the input sets the length
            input_frames = math.ceil(len(self.wave) / pipe.vocoder.config.hop_length / f) * f
            seconds = len(self.wave) / AUDIO_RATE + (self.extend or 0.0)
            if pipe.sampling_rate != AUDIO_RATE:
                raise ValueError(f"audio-to-audio reads its input at MusicLDM's {AUDIO_RATE} Hz; this checkpoint's "
                                 f"vocoder is at {pipe.sampling_rate} Hz")
            if pipe.scheduler.name == "pndm":
                raise ValueError("audio-to-audio starts part way down the schedule, which PNDM's warm-up cannot; "
                                 "use another sampler (ddim, the default, or lms, euler, heun, dpmsolver++)")
        frames = math.ceil(int(seconds / hop_seconds) / f) * f
        if self.loop:  # a loop is a whole number of latent frames: no trim may cut its seam
            seconds = frames * hop_seconds
        trained = pipe.unet.config.sample_size * f if pipe.unet.config.sample_size else frames
        windowed = self.loop or self.window == "windowed" or (self.window == "auto" and frames > trained)
        # an integer in [1, T], and a count this sampler's spacing can take (1000 "leading" steps cannot)
        sampling = pipe.scheduler.plan(self.num_inference_steps)
        width = pipe.unet.config.projection_class_embeddings_input_dim
        for name in ("prompt_embeds", "negative_prompt_embeds"):
            embeds = getattr(self, name)
            if embeds is not None and width is not None and embeds.shape[1] != width:
                raise ValueError(f"{name} must be a (batch, {width}) tensor, got {tuple(embeds.shape)}")
        if self.latents is not None:
            shape = pipe.latent_shape(takes, frames)
            if tuple(self.latents.shape) != shape:
                raise ValueError(f"latents has shape {tuple(self.latents.shape)}, expected {shape} for {takes} takes "
                                 f"of {seconds} s")
        check_memory(pipe, takes, frames, self.guided, seconds, trained if windowed else None)
        return Run(float(seconds), frames, sampling, windowed, input_frames)
