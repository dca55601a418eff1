"""Variational autoencoder for defect segmentation, as compared by Bergmann et al. ("Improving
Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders", VISAPP 2019,
Sec. 3.1.2), after Kingma & Welling (ICLR 2014) and An & Cho (2015).

Recipe: the Table I network with a bottleneck that outputs a mean and a log-variance for each of
the d latent dimensions; trained on the per-pixel squared error plus the KL divergence of the
approximate posterior from the unit Gaussian prior; at test time N = 6 latent samples are drawn
from the posterior of every window and decoded, and the per-pixel squared residuals of the N
reconstructions are averaged (the reconstruction probability of a Gaussian decoder up to
constants). Everything else -- patches, schedule, stride-30 evaluation, opening -- is the
autoencoder family's (:mod:`flawscope.models.autoencoder`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from flawscope._validation import Interval
from flawscope.chunks import in_passes
from flawscope.models.autoencoder import PATCH_TEST_PARAMS, WINDOWS_PER_PASS, ConvolutionalAutoencoder, window_starts
from flawscope.models.registry import register_detector


class VariationalAutoencoder(ConvolutionalAutoencoder):
    """VAE on 128 x 128 grey patches; residual averaged over ``n_samples`` posterior samples.

    Parameters
    ----------
    n_samples : int
        Latent samples decoded per window at test time (paper: 6). The samples' noise is drawn
        from ``seed`` once per window position, so an image's score does not depend on its batch.
        Every other parameter is that of :class:`~flawscope.models.autoencoder.ConvolutionalAutoencoder`.
    """

    _parameter_constraints = {**ConvolutionalAutoencoder._parameter_constraints, "n_samples": [Interval(int, 1, None)]}
    # 100 ms a step (training_speed.json): 85 epochs = 26,600 steps = 44 min
    recipes = {**ConvolutionalAutoencoder.recipes, "long": {"n_patches": 10_000, "epochs": 85}}

    def __init__(self, *, n_samples: int = 6, **params: Any) -> None:
        super().__init__(**params)
        self.n_samples = n_samples

    def _latent_outputs(self) -> int:
        return 2 * self.latent_dim

    def _posterior(self, patches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of Q(z | x), each ``M x d x 1 x 1``."""
        mean, log_variance = self.network_.encoder(patches).float().chunk(2, dim=1)  # float32 under autocast too
        return mean, torch.exp(0.5 * log_variance)

    def _loss(self, patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mean, std = self._posterior(patches)
        latent = mean + std * torch.randn(std.shape, generator=generator).to(std.device)
        reconstruction = self._patch_losses(patches, self.network_.decoder(latent))
        divergence = 0.5 * (mean.square() + std.square() - 2.0 * std.log() - 1.0).flatten(1).sum(dim=1)
        return (reconstruction + divergence).mean()

    def _reconstruct_windows(self, windows: torch.Tensor) -> torch.Tensor:
        images, n_windows = windows.shape[:2]
        flat = windows.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        mean, std = in_passes(self._posterior, flat, WINDOWS_PER_PASS)
        noise = self._window_noise(n_windows).to(windows.device)  # R x W x d x 1 x 1
        latent = (
            mean.view(1, images, n_windows, *mean.shape[1:])
            + std.view(1, images, n_windows, *std.shape[1:]) * noise[:, None]
        )
        latent = latent.flatten(0, 2)
        decoded = in_passes(self.network_.decoder, latent, WINDOWS_PER_PASS)
        return decoded.reshape(self.n_samples, *windows.shape)

    def _window_noise(self, n_windows: int) -> torch.Tensor:
        """The seeded latent noise of ``n_windows`` windows, drawn once per window count (an exported graph holds
        it as a constant)."""
        cache: dict[tuple[int, ...], torch.Tensor] = vars(self).setdefault("_noise_cache", {})
        key = (n_windows, self.n_samples, self.latent_dim, self.seed)
        if key not in cache:
            generator = self._generator()
            cache[key] = torch.randn(self.n_samples, n_windows, self.latent_dim, 1, 1, generator=generator)
        return cache[key]

    def _export_context(self) -> contextlib.AbstractContextManager[None]:
        self._window_noise(len(window_starts(self.image_size, self.patch_size, self.stride)) ** 2)
        return super()._export_context()


register_detector("vae", VariationalAutoencoder, test_params=PATCH_TEST_PARAMS)
