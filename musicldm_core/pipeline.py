"""MusicLDM text-to-music inference (Chen et al. 2023, arXiv 2308.01546), end to end.

The inference procedure of the paper, as diffusers' MusicLDMPipeline runs it:
  1. encode the prompt (and the negative prompt) with CLAP's text tower into 512-d vectors;
  2. build the guided noise predictor: eps = eps_uncond + g * (eps_cond - eps_uncond);
  3. sample a (B, 8, T/4, 16) latent from Gaussian noise with the chosen sampler;
  4. decode the latent to a (B, 1, T, 64) mel spectrogram with the VAE, vocode it to 16 kHz audio
     with HiFi-GAN and trim it to the asked length; with several takes per prompt, rank them by
     CLAP text-audio similarity.

`MusicLDMPipeline(...)(prompt, ...)` takes the reference's parameters with the same names,
defaults and meaning; every input is checked by request.py before any heavy work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from .clap import Clap
from .audio_frontend import LogMel, resample
from .clap_config import FeatureExtractorConfig
from .errors import check_finite, check_waveforms
from .hub import DEFAULT_REPO, resolve
from .noise import randn
from .compiled import CompiledStage, compile_stages
from .editing import AudioEdit
from .layers import EmbeddingLinear
from .longform import window_frames, window_starts, windowed
from .placement import Placement, component_dtype, parse_device, parse_dtype
from .request import Request
from .samplers import Scheduler, check_sampler
from .tokenizer import ClapTokenizer
from .unet import UNet
from .vae import AutoencoderKL
from .vocoder import HifiGan

Generator = Union[torch.Generator, List[torch.Generator], None]


@dataclass
class AudioPipelineOutput:
    """`.audios`: float32 waveforms (N, samples) as numpy ("np") or torch ("pt"), or latents ("latent").
    `.scores`: with several takes, each returned take's CLAP score (logit) for its prompt, else None."""

    audios: Any
    scores: Optional[torch.Tensor] = None


def guided_eps(unet: UNet, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
               scale: Optional[float]) -> torch.Tensor:
    """Step 2, the noise predictor eps(x_t, t | c), as one function: what `pipe.compile()` compiles
    (on a GPU, captures as one CUDA graph) is a denoising step's whole model evaluation.

    x: (k*B, 8, T', F'), k windows of the B latents stacked along the batch; t: () timestep;
    cond: (B, 512) text vectors, or with guidance (2B, 512) = [negative; positive];
    scale: the guidance scale g, or None without guidance. With guidance both halves run as one
    batched UNet call: eps = eps_uncond + g * (eps_cond - eps_uncond). Returns (k*B, 8, T', F').
    """
    if scale is None:
        return unet(x, t, cond.repeat(x.shape[0] // cond.shape[0], 1))
    uncond, positive = cond.chunk(2)
    k = x.shape[0] // uncond.shape[0]
    eps_uncond, eps_cond = unet(torch.cat([x, x]), t, torch.cat([uncond.repeat(k, 1), positive.repeat(k, 1)])
                                ).chunk(2)
    return eps_uncond + scale * (eps_cond - eps_uncond)


class MusicLDMPipeline:
    def __init__(self, tokenizer: ClapTokenizer, text_encoder: Clap, unet: UNet, vae: AutoencoderKL,
                 vocoder: HifiGan, scheduler: Scheduler, feature_extractor: LogMel):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.unet = unet
        self.vae = vae
        self.vocoder = vocoder
        self.scheduler = scheduler
        self.feature_extractor = feature_extractor
        self.vae_scale_factor = vae.config.scale_factor
        self.vae_slicing = False
        self.batch_invariant = False
        self.compiled: Dict[str, CompiledStage] = {}  # set by compile()
        self.placement = Placement(lambda: self.components)

    @classmethod
    def from_pretrained(cls, source: Union[str, Path] = DEFAULT_REPO, *, revision: Optional[str] = None,
                        device: Union[str, torch.device] = "cpu", dtype: Union[str, torch.dtype, None] = None,
                        torch_dtype: Union[str, torch.dtype, None] = None,
                        scheduler: Optional[str] = None) -> "MusicLDMPipeline":
        """Load a diffusers-layout MusicLDM checkpoint from a folder or a Hub repo id.

        dtype (alias torch_dtype): float32 (default), float16 or bfloat16; weights are cast while
        they are read. scheduler: None = the checkpoint's own (DDIM), or a sampler name
        ("ddim", "pndm", "lms", "euler", "euler_ancestral", "heun", "dpmsolver++").
        """
        if dtype is not None and torch_dtype is not None and parse_dtype(dtype) != parse_dtype(torch_dtype):
            raise ValueError(f"dtype={dtype} and torch_dtype={torch_dtype} disagree; give one")
        dtype = parse_dtype(dtype if dtype is not None else torch_dtype if torch_dtype is not None else torch.float32)
        device = parse_device(device)
        if scheduler is not None:
            check_sampler(scheduler)  # unknown names fail before any download or load
        folder = resolve(source, revision)
        kw = dict(device=device, dtype=dtype)
        return cls(
            tokenizer=ClapTokenizer.from_pretrained(folder / "tokenizer"),
            text_encoder=Clap.from_pretrained(folder / "text_encoder", **kw),
            unet=UNet.from_pretrained(folder / "unet", **kw),
            vae=AutoencoderKL.from_pretrained(folder / "vae", **kw),
            vocoder=HifiGan.from_pretrained(folder / "vocoder", device=device, dtype=component_dtype("vocoder", dtype)),
            scheduler=Scheduler.from_pretrained(folder / "scheduler", scheduler),
            feature_extractor=LogMel(FeatureExtractorConfig.from_json(
                folder / "feature_extractor" / "preprocessor_config.json")),
        )

    @property
    def components(self) -> Dict[str, torch.nn.Module]:
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae, "vocoder": self.vocoder}

    @property
    def device(self) -> torch.device:
        return self.placement.device

    @property
    def dtype(self) -> torch.dtype:
        return self.placement.dtype

    @property
    def sampling_rate(self) -> int:
        return self.vocoder.config.sampling_rate

    def to(self, device: Union[str, torch.device, None] = None,
           dtype: Union[str, torch.dtype, None] = None) -> "MusicLDMPipeline":
        self.compiled = {}  # compiled for the old device and dtype
        self.placement.to(parse_device(device) if device is not None else None,
                          parse_dtype(dtype) if dtype is not None else None)
        return self

    def enable_vae_slicing(self) -> None:
        """Decode one take at a time: VAE activation memory no longer grows with the batch."""
        self.vae_slicing = True

    def disable_vae_slicing(self) -> None:
        self.vae_slicing = False

    def compile(self, stages: Optional[Tuple[str, ...]] = None, mode: Optional[str] = None) -> None:
        """Compile `stages` ("unet", "vae", "vocoder") with torch.compile (see compiled.py): by default
        the UNet step (`guided_eps`) with inductor freezing on the CPU; all three in "reduce-overhead"
        mode (CUDA graphs) on a GPU. Each new input shape or guidance scale compiles on first use
        (`compile_seconds()` reports it)."""
        targets = {"unet": guided_eps, "vae": self.vae.decode, "vocoder": self.vocoder}
        self.compiled = compile_stages(targets, self.device, stages, mode)

    def compile_seconds(self) -> Dict[str, float]:
        """Seconds spent compiling, per stage (every input shape it met)."""
        return {name: sum(stage.compile_seconds.values()) for name, stage in self.compiled.items()}

    def enable_batch_invariance(self) -> None:
        """Make each take independent of what shares its call, to the last bit: the UNet's embedding
        layers run row by row (layers.EmbeddingLinear), each take is decoded and vocoded alone, and
        takes are ranked per prompt. A batch of prompts then gives each prompt exactly what it gets
        alone with the same noise (batch mode relies on it); the cost is small."""
        self.batch_invariant = True
        for module in self.unet.modules():
            if isinstance(module, EmbeddingLinear):
                module.row_by_row = True

    def enable_model_cpu_offload(self, device: Union[str, torch.device] = "cuda") -> None:
        """Keep every component on the CPU and move each to `device` only while it runs."""
        self.placement.offload(parse_device(device))

    def enable_low_memory(self) -> None:
        """On the CPU, keep only the running component's weights resident (see placement.py): peak
        RSS becomes the largest component plus activations, for a small cost on each run."""
        self.placement.low_memory = True

    @torch.inference_mode()
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        audio_length_in_s: Optional[float] = None,
        num_inference_steps: int = 200,
        guidance_scale: float = 2.0,
        negative_prompt: Union[str, List[str], None] = None,
        num_waveforms_per_prompt: Optional[int] = 1,
        eta: float = 0.0,
        generator: Generator = None,
        latents: Optional[torch.Tensor] = None,
        prompt_embeds: Optional[torch.Tensor] = None,
        negative_prompt_embeds: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        callback: Optional[Callable[[int, torch.Tensor, torch.Tensor], None]] = None,
        callback_steps: Optional[int] = 1,
        cross_attention_kwargs: Optional[Dict[str, Any]] = None,
        output_type: Optional[str] = "np",
        rank_within_prompt: bool = False,
        crop: str = "random",
        progress: Optional[Callable[[int, int], None]] = None,
        loop: bool = False,
        window: str = "auto",
        audio=None,
        audio_sampling_rate: Optional[int] = None,
        strength: Optional[float] = None,
        inpaint: Optional[tuple[float, float]] = None,
        extend: Optional[float] = None,
    ):
        """Generate audio for `prompt`; the reference's parameters, plus:

        rank_within_prompt: with several prompts, rank each prompt's own takes only. The reference
            (default False) ranks every prompt against ALL takes of the batch, so a prompt can get
            another prompt's take back.
        crop: how the ranking crops takes longer than CLAP's 10 s window: "random" draws the offset
            from numpy's global RandomState exactly as the reference (seed it to reproduce), "start"
            or "center" are deterministic.
        progress(n, total): after each UNet call, n of the run's `total` (window) evaluations done.

        Beyond the reference (longform.py):
        loop: a seamless loop of audio_length_in_s (rounded to whole 40 ms latent frames): every
            stage runs on circular windows, so the last sample flows into the first.
        window: "auto" (the reference's whole-latent path up to the trained 10.24 s, overlapping
            windows beyond), "whole" or "windowed" to force one.
        audio: an input (file path, or an array at audio_sampling_rate Hz) for audio-to-audio, its
            length the output's. strength s in [0, 1] (SDEdit): the input noised s of the way and
            denoised under the prompt (0: the input's VAE round trip; 1: its length, nothing else).
            inpaint=(start_s, end_s): regenerate that span, keep the rest. extend=seconds: continue it.
        """
        request = Request(prompt=prompt, audio_length_in_s=audio_length_in_s, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, negative_prompt=negative_prompt,
                          num_waveforms_per_prompt=num_waveforms_per_prompt, eta=eta, generator=generator,
                          latents=latents, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                          callback=callback, callback_steps=callback_steps,
                          cross_attention_kwargs=cross_attention_kwargs, output_type=output_type,
                          return_dict=return_dict, crop=crop, progress=progress, loop=loop, window=window,
                          audio=audio, audio_sampling_rate=audio_sampling_rate, strength=strength, inpaint=inpaint,
                          extend=extend)
        run = request.plan(self)  # every input checked before any model runs
        device, takes = self.device, num_waveforms_per_prompt
        guided = request.guided

        # 1. Encode the prompts into CLAP vectors; with guidance, [negative; positive] in one batch.
        cond = self.encode_prompt(prompt, prompt_embeds, device).repeat_interleave(takes, dim=0)
        if guided:
            if negative_prompt_embeds is None:
                # the reference truncates negative prompts at prompt_embeds.shape[1] tokens (the CLAP
                # projection width, 512 as published), not at the tokenizer's model_max_length
                negative = request.negative_prompts(cond.shape[0] // takes)
                negative_prompt_embeds = self.encode_prompt(negative, None, device, max_length=cond.shape[1])
            uncond = negative_prompt_embeds.to(device=device, dtype=self.dtype).repeat_interleave(takes, dim=0)
            cond = torch.cat([uncond, cond])

        # 2. The guided noise predictor eps(x_t, t | c); past the trained length, window by window.
        unet, eps = self.placement.ready("unet"), self.compiled.get("unet", guided_eps)
        scale = guidance_scale if guided else None
        shape = self.latent_shape(cond.shape[0] // (2 if guided else 1), run.frames)
        window, overlap = window_frames(self, "unet")
        windows = len(window_starts(shape[2], window, window - overlap, loop)) if run.windowed else 1

        def eps_of(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if progress is not None:
                progress(x.shape[0] // shape[0], len(plan.timesteps) * windows)
            return eps(unet, x, t, cond, scale)

        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if not run.windowed:
                return eps_of(x, t)
            return windowed(lambda w: eps_of(w, t), x, 2, window, overlap, circular=loop, batch=2)

        # 3. Sample the latent from noise. Shape (B, 8, T/4, mel_bins/4); noise drawn as diffusers draws it.
        noise = randn(shape, generator, device, self.dtype) if latents is None else latents.to(device, self.dtype)
        plan, init, constrain, edit = run.sampling, None, None, None
        if run.input_frames:  # audio-to-audio: start from, or hold to, the input's latent
            edit = AudioEdit(self, request, run, shape)
            plan, init, constrain = edit.sampling(noise)

        def on_step(i: int, t: torch.Tensor, x: torch.Tensor) -> None:
            if callback is not None and i % callback_steps == 0:
                callback(i // plan.evals_per_step, t, x)

        if plan is None:  # strength 0: the input's round trip
            z = init
        else:
            z = self.scheduler.sample(predict, noise, plan, eta=eta, generator=generator, callback=on_step, init=init,
                                      constrain=constrain)
        check_finite(z, "the denoised latents", "unet")
        if output_type == "latent":
            return AudioPipelineOutput(audios=z)  # as the reference: unscaled, and always an output object

        # 4. Decode: latent -> mel (VAE) -> 16 kHz waveform (HiFi-GAN), trimmed; then rank the takes.
        audio = self.decode_latents(z, run.windowed, loop)
        if edit is not None:
            audio = edit.keep_input(audio)  # the kept span: exactly the input's round trip
        check_waveforms(audio)
        audio = audio[:, :int(run.seconds * self.sampling_rate)]
        scores = None
        if takes > 1 and prompt is not None:
            audio, scores = self.rank(prompt, audio, takes, rank_within_prompt or self.batch_invariant, crop)
        if output_type == "np":
            audio = audio.numpy()
        return AudioPipelineOutput(audios=audio, scores=scores) if return_dict else (audio,)

    def decode_latents(self, z: torch.Tensor, windowed_path: bool, loop: bool) -> torch.Tensor:
        """(B, 8, T', F') latents -> (B, T' * 4 * hop) float32 waveforms on the CPU, VAE then HiFi-GAN:
        the reference's whole-clip decode, or overlapping windows (circular for a loop)."""
        one_by_one = self.vae_slicing or self.batch_invariant
        decode = self.compiled.get("vae", self.placement.ready("vae").decode)
        z = 1 / self.vae.config.scaling_factor * z
        if windowed_path:
            mel = windowed(lambda w: decode(w, slice_batch=one_by_one), z, 2, *window_frames(self, "vae", loop),
                           num=self.vae_scale_factor, circular=loop)
        else:
            mel = decode(z, slice_batch=one_by_one)
        check_finite(mel, "the decoded mel spectrogram", "vae")
        vocoder = self.compiled.get("vocoder", self.placement.ready("vocoder"))

        def vocode(m: torch.Tensor) -> torch.Tensor:  # (B, frames, bins) -> (B, frames * hop)
            return torch.cat([vocoder(row) for row in m.split(1 if self.batch_invariant else len(m))])

        mel = mel.squeeze(1)
        if windowed_path:
            return windowed(vocode, mel, 1, *window_frames(self, "vocoder", loop), num=self.vocoder.config.hop_length,
                            circular=loop).cpu().float()
        return vocode(mel).cpu().float()

    def encode_prompt(self, prompt: Union[str, List[str], None], embeds: Optional[torch.Tensor],
                      device: torch.device, max_length: Optional[int] = None) -> torch.Tensor:
        """Prompts -> CLAP text features (B, 512) on `device` in the pipeline's dtype.

        max_length: truncate at this many tokens instead of the tokenizer's model_max_length.
        """
        if embeds is None:
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            # The reference pads every prompt to 512 tokens; padding is masked out, so each prompt
            # encoded alone, unpadded, gives the same vector (to float rounding, ~1e-7) at a fraction
            # of the cost, and a vector that does not depend on the other prompts of the batch.
            clap = self.placement.ready("text_encoder")
            embeds = torch.cat([clap.text_features(ids.to(device), mask.to(device)) for ids, mask in
                                (self.tokenizer([text], pad_to_max_length=False, max_length=max_length)
                                 for text in texts)])
        return embeds.to(device=device, dtype=self.dtype)

    def rank(self, prompt: Union[str, List[str]], audio: torch.Tensor, takes: int, within_prompt: bool = False,
             crop: str = "random") -> tuple[torch.Tensor, torch.Tensor]:
        """Order takes by CLAP similarity to their prompt, best first: (N, samples) -> (N, samples),
        and each returned take's score (N,).

        As the reference: resample 16 kHz -> 48 kHz, log-mel, logits_per_text, argsort descending,
        keep `takes` per prompt row. within_prompt ranks each prompt's own takes only (one prompt
        at a time, so its ranking does not depend on the other prompts).
        """
        texts = [prompt] if isinstance(prompt, str) else list(prompt)
        if within_prompt and len(texts) > 1:
            ranked = [self.rank(text, audio[i * takes:(i + 1) * takes], takes, crop=crop) for i, text in enumerate(texts)]
            return torch.cat([a for a, _ in ranked]), torch.cat([s for _, s in ranked])
        ids, mask = self.tokenizer(texts, pad_to_max_length=False)
        waves = resample(audio, self.sampling_rate, self.feature_extractor.config.sampling_rate)
        mel = self.feature_extractor(list(waves.numpy()), crop=crop)
        clap = self.placement.ready("text_encoder")
        dev = self.device
        logits = clap.logits_per_text(ids.to(dev), mask.to(dev), mel.to(dev, self.dtype)).float().cpu()
        order = torch.argsort(logits, dim=1, descending=True)[:, :takes]
        return torch.index_select(audio, 0, order.reshape(-1)), logits.gather(1, order).reshape(-1)

    def latent_shape(self, takes: int, frames: int) -> tuple[int, int, int, int]:
        """(takes, latent channels, frames / f, mel bins / f): the latent of `frames` mel frames."""
        f = self.vae_scale_factor
        return takes, self.unet.config.in_channels, frames // f, self.vocoder.config.model_in_dim // f
