"""MusicLDM text-to-music inference (Chen et al. 2023, arXiv 2308.01546), end to end.

`generate` is the paper's inference procedure, as diffusers' MusicLDMPipeline runs it:
  1. encode the prompt (and the negative prompt) with CLAP's text tower into 512-d vectors (beyond the
     reference: a clip's CLAP audio vector, a weighted blend, or a schedule's vector per window: conditioning.py);
  2. build the guided noise predictor: eps = eps_uncond + g * (eps_cond - eps_uncond) (guidance.py);
  3. sample a (B, 8, T/4, 16) latent from Gaussian noise with the chosen sampler (samplers/);
  4. decode the latent to a (B, 1, T, 64) mel spectrogram with the VAE, vocode it to 16 kHz audio
     with HiFi-GAN, trim it to the asked length; rank several takes per prompt by CLAP (ranking.py).

`pipe(prompt, ...)` takes the reference's parameters (same names, defaults and meaning) and hands
them, as one `Options` (options.py: every field, its checks, the plan), to `generate`. The parts
below are handed only what they use: geometry.py (lengths), longform.py (windows), editing.py
(audio-to-audio), placement.py (devices, memory), load.py (from_pretrained's body).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch

from . import conditioning
from .audio_prompt import audio_embedding, read_audio_prompt
from .compiled import CompiledStage
from .conditioning import Blend
from .controls import Controls
from .editing import AudioEdit, encode_input
from .errors import check_finite, check_waveforms
from .geometry import Geometry
from .guidance import guided_eps, noise_predictor
from .hub import DEFAULT_REPO
from .load import load_components
from .longform import windowed
from .noise import randn
from .options import Options, Run, plan_call
from .placement import Placement
from .ranking import rank
from .samplers import Scheduler


@dataclass
class AudioPipelineOutput:
    """`.audios`: float32 waveforms (N, samples) as numpy ("np") or torch ("pt"), or latents ("latent").
    `.scores`: with several takes, each returned take's CLAP score (logit) for its prompt, else None."""

    audios: Any
    scores: Optional[torch.Tensor] = None
    mels: Any = None  # with return_mels: (N, frames, bins) log-mels the VAE decoded, the image the model drew


class MusicLDMPipeline(Controls):
    def __init__(self, tokenizer, text_encoder, unet, vae, vocoder, scheduler: Scheduler, feature_extractor):
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.vocoder, self.scheduler, self.feature_extractor = vocoder, scheduler, feature_extractor
        self.vae_slicing = self.batch_invariant = False
        self.compiled: Dict[str, CompiledStage] = {}  # set by compile()
        self.placement = Placement(lambda: self.components)
        self.lock = threading.RLock()  # one generation at a time: threads may share a pipeline (see generate)

    @classmethod
    def from_pretrained(cls, source=DEFAULT_REPO, **kwargs) -> "MusicLDMPipeline":
        """A diffusers-layout checkpoint from a folder or Hub id (default ucsd-reach/musicldm); keywords: revision,
        device, dtype (alias torch_dtype: float32, float16, bfloat16), scheduler (None: the checkpoint's, DDIM;
        or "ddim", "pndm", "lms", "euler", "euler_ancestral", "heun", "dpmsolver++"), attention_heads ("checkpoint":
        the config's, exact to diffusers; "authors": 32 channels a head, as MusicLDM was trained). See load.py."""
        return cls(**load_components(source, **kwargs))

    @property
    def components(self) -> Dict[str, torch.nn.Module]:
        return {"text_encoder": self.text_encoder, "unet": self.unet, "vae": self.vae, "vocoder": self.vocoder}

    @property
    def geometry(self) -> Geometry:  # lengths and shapes, from the current components (one may be swapped)
        return Geometry.from_configs(self.unet.config, self.vae.config, self.vocoder.config)

    vae_scale_factor = property(lambda self: self.geometry.vae_factor)
    sampling_rate = property(lambda self: self.geometry.sampling_rate)

    def __call__(self, prompt=None, audio_length_in_s=None, num_inference_steps=200, guidance_scale=2.0,
                 negative_prompt=None, num_waveforms_per_prompt=1, eta=0.0, generator=None, latents=None,
                 prompt_embeds=None, negative_prompt_embeds=None, return_dict=True, callback=None, callback_steps=1,
                 cross_attention_kwargs=None, output_type="np", **beyond) -> AudioPipelineOutput:
        """diffusers' MusicLDMPipeline.__call__ (same parameters); `beyond`: any further field of Options."""
        return self.generate(Options(
            prompt, audio_length_in_s, num_inference_steps, guidance_scale, negative_prompt, num_waveforms_per_prompt,
            eta, generator, latents, prompt_embeds, negative_prompt_embeds, return_dict, callback, callback_steps,
            cross_attention_kwargs, output_type, **beyond))

    def plan(self, o: Options) -> Run:
        """Every check of `o` and what this checkpoint makes of it, before any model runs."""
        return plan_call(o, (self.unet.config, self.vae.config, self.vocoder.config), self.scheduler, self.device,
                         vae_slicing=self.vae_slicing)

    def generate(self, o: Options, run: Optional[Run] = None) -> AudioPipelineOutput:
        """The procedure, for the options of one call (options.py says what each field does); `run`: their
        plan when the caller made it already (app/prepare.py), else it is made here. Calls from several
        threads run one after another: offload moves, compiled graphs and numpy's global random state (the
        ranking's crop) are shared by every call."""
        with self.lock:
            return self._generate(o, run or self.plan(o))

    @torch.inference_mode()
    def _generate(self, o: Options, run: Run) -> AudioPipelineOutput:
        device, takes, g = self.device, o.num_waveforms_per_prompt, self._geometry(run)  # computed once a call
        shape = g.latent_shape(run.takes, run.frames)  # (B, 8, T/4, bins/4)

        # 1. Encode the prompts into CLAP vectors (B, 512); with guidance, [negative; positive] in one batch.
        #    Blends, audio prompts and schedules (beyond the reference) give the positive side: conditioning.py.
        report = o.progress or (lambda stage, done, total: None)  # stages reported as (stage, done, total)
        report("encoding the prompt", 0, 1)
        c, per_window = run.conditioning, None
        if c is not None and c.schedule is not None:  # each denoising window's vector, per take (W, takes, 512)
            per_window = self.schedule_vectors(run, g)[:, None].repeat_interleave(takes, dim=1)
            cond = per_window[0]
        else:
            rows = self.encode_prompt(o.prompt, o.prompt_embeds, device) if c is None else \
                self.condition_vectors(c.rows, c.blend)
            cond = rows.repeat_interleave(takes, dim=0)
        if o.guided:
            uncond = o.negative_prompt_embeds
            if uncond is None:  # the reference cuts negative prompts at prompt_embeds.shape[1] tokens (512)
                uncond = self.encode_prompt(o.negative_prompts(cond.shape[0] // takes), None, device, cond.shape[1])
            cond = torch.cat([uncond.to(device=device, dtype=self.dtype).repeat_interleave(takes, dim=0), cond])
        report("encoding the prompt", 1, 1)

        # 2. The guided noise predictor eps(x_t, t | c); past the trained length, window by window.
        denoiser = noise_predictor(self.compiled.get("unet", guided_eps), self.placement.ready("unet"), cond,
                                   o.guidance_scale if o.guided else None, loop=run.loop,
                                   window=g.window("denoising") if run.windowed else None,
                                   progress=lambda done, total: report("denoising: windows", done, total),
                                   per_window=per_window)

        # 3. Sample from Gaussian noise (drawn as diffusers draws it); audio-to-audio holds to the input.
        noise = randn(shape, o.generator, device, self.dtype) if o.latents is None else o.latents.to(device, self.dtype)
        steps, init, constrain, edit = run.sampling, None, None, None
        if run.wave is not None:
            z_in = encode_input(run.wave, run, g, self.placement.ready("vae"),
                                lambda done, total: report("encoding the input", done, total)).expand(shape)
            self.placement.ready("unet")  # back from the encoder (with offload, one component on the device)
            edit = AudioEdit(z_in, o, run, g)
            steps, init, constrain = edit.sampling(noise)

        def on_step(i: int, t: torch.Tensor, x: torch.Tensor) -> None:
            if o.callback is not None and i % o.callback_steps == 0:
                o.callback(i // steps.evals_per_step, t, x)

        z = init if steps is None else run.scheduler.sample(
            denoiser, noise, steps, eta=o.eta, generator=o.generator, callback=on_step, init=init, constrain=constrain,
            progress=lambda done, total: report("denoising", done, total))
        check_finite(z, "the denoised latents", "unet")
        if o.output_type == "latent":
            return AudioPipelineOutput(audios=z)  # as the reference: unscaled, and always an output object

        # 4. Decode: latent -> mel (VAE) -> 16 kHz waveform (HiFi-GAN), trimmed; then rank the takes.
        mel = self.decode_mel(z, run, report)  # (B, 1, frames, bins)
        audio = self.vocode(mel, run, report)
        if edit is not None:  # the input's round trip, in windows, its stages named "... the input"
            trip, input_report = run._replace(windowed=True, loop=False), _of_the_input(report)
            audio = edit.keep_input(audio, lambda kept: self.decode(kept, trip, input_report))
        check_waveforms(audio)
        audio, scores = audio[:, :int(run.seconds * g.sampling_rate)], None
        mels = mel.squeeze(1).cpu().float() if o.return_mels else None  # (B, frames, bins)
        if takes > 1 and o.prompt is not None and o.prompt_weights is None:  # a blend of texts: not ranked
            report("ranking takes", 0, 1)
            order, scores = self.rank_order(o.prompt, audio, takes, o.rank_within_prompt or self.batch_invariant, o.crop)
            audio = audio.index_select(0, order)
            mels = mels.index_select(0, order) if mels is not None else None
            report("ranking takes", 1, 1)
        if o.output_type == "np":
            audio, mels = audio.numpy(), mels.numpy() if mels is not None else None
        return AudioPipelineOutput(audios=audio, scores=scores, mels=mels) if o.return_dict else (audio,)

    def encode_prompt(self, prompt: Union[str, List[str], None], embeds: Optional[torch.Tensor],
                      device: torch.device, max_length: Optional[int] = None) -> torch.Tensor:
        """Prompts (or their embeddings) -> CLAP text features (B, 512) on `device` in the pipeline's dtype."""
        if embeds is None:
            texts = [prompt] if isinstance(prompt, str) else prompt  # (each encoded alone, unpadded: clap.py)
            embeds = self.placement.ready("text_encoder").encode_texts(self.tokenizer, texts, max_length)
        return embeds.to(device=device, dtype=self.dtype)

    def condition_vectors(self, blends: List[Blend], mode: str) -> torch.Tensor:
        """Blends of texts and audio prompts -> (N, 512) their vectors, unit length, on the device (conditioning.py)."""
        clap = self.placement.ready("text_encoder")
        vectors = conditioning.vectors(blends, mode, lambda texts: clap.encode_texts(self.tokenizer, texts),
                                       lambda clips: audio_embedding(clap, self.feature_extractor, clips))
        return vectors.to(device=self.device, dtype=self.dtype)

    def schedule_vectors(self, run: Run, g: Geometry) -> torch.Tensor:
        """(W, 512): the vector of each denoising window, from the schedule at the window's centre."""
        c = run.conditioning
        entries = self.condition_vectors([blend for _, blend in c.schedule], c.blend)
        centres = conditioning.window_centres(run.frames // g.vae_factor, *g.window("denoising"), run.loop,
                                              g.frame_seconds)
        return conditioning.window_vectors(c, entries, centres, run.frames * g.hop_seconds, run.loop)

    def embed_audio_prompt(self, audio, audio_sampling_rate: Optional[int] = None) -> torch.Tensor:
        """An audio prompt (a path, or an array at audio_sampling_rate) -> (1, 512) its CLAP audio vector, the
        condition `pipe(audio_prompt=...)` uses: pass it as prompt_embeds for the same generation."""
        with torch.inference_mode():
            wave = read_audio_prompt(audio, audio_sampling_rate, "audio_prompt")
            return self.condition_vectors([conditioning.Blend(audio=wave)], "linear")

    def _geometry(self, run: Optional[Run]) -> Geometry:
        return run.geometry if run is not None and run.geometry is not None else self.geometry

    def decode(self, z: torch.Tensor, run: Optional[Run] = None, report=lambda *_: None) -> torch.Tensor:
        """(B, 8, T', F') latents -> (B, T' * 4 * hop) float32 waveforms on the CPU, VAE then HiFi-GAN: the
        reference's whole-clip decode (run None), or the run's overlapping windows (circular for a loop)."""
        return self.vocode(self.decode_mel(z, run, report), run, report)

    def _stage(self, name: str, fn: Callable, x: torch.Tensor, dim: int, num: int, run: Optional[Run],
               report) -> torch.Tensor:
        """A stage over x's `dim`: whole, or in the run's windows of that stage (longform.windowed)."""
        windows, loop = run is not None and run.windowed, run is not None and run.loop
        window = self._geometry(run).window(name, loop) if windows else (x.shape[dim], 0)
        return windowed(fn, x, dim, *window, num=num, circular=loop, progress=lambda done, total: report(name, done, total))

    def decode_mel(self, z: torch.Tensor, run: Optional[Run] = None, report=lambda *_: None) -> torch.Tensor:
        """(B, 8, T', F') latents -> (B, 1, 4 T', bins) log-mel spectrograms (the VAE, after its scaling)."""
        one_by_one = self.vae_slicing or self.batch_invariant
        decode = self.compiled.get("vae", self.placement.ready("vae").decode)
        mel = self._stage("decoding", lambda w: decode(w, slice_batch=one_by_one), 1 / self.vae.config.scaling_factor * z,
                          2, self._geometry(run).vae_factor, run, report)
        check_finite(mel, "the decoded mel spectrogram", "vae")
        return mel

    def vocode(self, mel: torch.Tensor, run: Optional[Run] = None, report=lambda *_: None) -> torch.Tensor:
        """(B, 1, frames, bins) mels -> (B, frames * hop) float32 waveforms on the CPU (HiFi-GAN)."""
        split = self.batch_invariant
        vocoder = self.compiled.get("vocoder", self.placement.ready("vocoder"))
        vocode = lambda m: torch.cat([vocoder(row) for row in m.split(1 if split else len(m))])  # noqa: E731
        return self._stage("vocoding", vocode, mel.squeeze(1), 1, self._geometry(run).hop, run, report).cpu().float()

    def rank(self, prompt: Union[str, List[str]], audio: torch.Tensor, takes: int, within_prompt: bool = False,
             crop: str = "random") -> Tuple[torch.Tensor, torch.Tensor]:
        """Takes (N, samples), `takes` per prompt, best first by CLAP, and their scores (N,); see ranking.py."""
        order, scores = self.rank_order(prompt, audio, takes, within_prompt, crop)
        return audio.index_select(0, order), scores

    def rank_order(self, prompt: Union[str, List[str]], audio: torch.Tensor, takes: int, within_prompt: bool = False,
                   crop: str = "random") -> Tuple[torch.Tensor, torch.Tensor]:
        """Which rows of `audio`, best first (N,), and their scores (N,)."""
        return rank([prompt] if isinstance(prompt, str) else list(prompt), audio, takes, tokenizer=self.tokenizer,
                    clap=self.placement.ready("text_encoder"), logmel=self.feature_extractor,
                    sampling_rate=self.sampling_rate, dtype=self.dtype, within_prompt=within_prompt, crop=crop)


def _of_the_input(report: Callable[[str, int, int], None]) -> Callable[[str, int, int], None]:
    """`report`, each stage named as the input's ("decoding the input"): its round trip beside the takes'."""
    return lambda stage, done, total: report(f"{stage} the input", done, total)
