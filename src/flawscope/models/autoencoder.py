"""Convolutional autoencoders that segment defects by their reconstruction residual.

* ``ae_l2`` and ``ae_ssim``: Bergmann, Löwe, Fauser, Sattlegger & Steger, "Improving
  Unsupervised Defect Segmentation by Applying Structural Similarity to Autoencoders", VISAPP
  2019. Recipe: grey images downscaled to 256 x 256; 10,000 random 128 x 128 patches cropped
  from them; the network of the paper's Table I (below) with latent size d = 100 (500 for fine
  textures); Adam, learning rate 2e-4, weight decay 1e-5, 200 epochs; the loss is the per-pixel
  squared error (L2) or the SSIM dissimilarity (window 11, see :mod:`flawscope.ssim`), and the
  same measure gives the residual map at test time. Evaluation: 128 x 128 windows every 30 px
  are reconstructed and the overlapping reconstructions averaged; the residual map is
  thresholded and opened with a disk of diameter 4.
* ``ae_mse``: the plain autoencoder of the lecture slides: whole RGB images at 256 x 256 (the
  MVTec AD paper's 256-px variant of the network: one more strided convolution, latent 128),
  per-pixel squared error as the map, the image's mean squared error as its score, OK / NOT OK
  at mean + 3 std of the good images' scores (``calibrate``'s default rule).

The full recipe takes hours on a small CPU, so ``recipe="fast"`` (default) trains fewer epochs
and says so when fitting; ``recipe="long"`` trains for the longest schedule that fits 60 minutes of
the 2-core CPU; ``recipe="paper"`` is the published schedule.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from flawscope._validation import BOOLEAN, NONE, Check, Interval
from flawscope.chunks import in_passes
from flawscope.data.datasets import ImageDataset
from flawscope.data.transforms import luma_batch
from flawscope.errors import ConfigError, DataError
from flawscope.maps import gaussian_blur
from flawscope.models.base import RUN_CONSTRAINTS, Detector
from flawscope.models.registry import register_detector
from flawscope.postprocess import ThresholdRule
from flawscope.ssim import ssim_map
from flawscope.state import module_tensors, restore_module
from flawscope.training import (
    RECIPE_CONSTRAINTS,
    TRAINING_CONSTRAINTS,
    EarlyStopping,
    TrainingLoop,
    announce_schedule,
    resolve_training_precision,
    saved_training_precision,
)

# Table I of Bergmann et al. (2019): the encoder's layers as (output channels, kernel, stride,
# padding) for a 128 x 128 input; a 1-channel bottleneck convolution to d follows.
TABLE_I = (
    (32, 4, 2, 1),
    (32, 4, 2, 1),
    (32, 3, 1, 1),
    (64, 4, 2, 1),
    (64, 3, 1, 1),
    (128, 4, 2, 1),
    (64, 3, 1, 1),
    (32, 3, 1, 1),
)
# The MVTec AD paper's 256-px variant adds one strided convolution in front (one per doubling).
EXTRA_DOWNSAMPLING = (32, 4, 2, 1)
LEAKY_SLOPE = 0.2
WINDOWS_PER_PASS = 64  # evaluation windows per network pass (bounds activation memory)
SCORE_SIGMA = 4.0


def _power_of_two(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 32 <= value <= 1024 and value & (value - 1) == 0


POWER_OF_TWO = Check(_power_of_two, "a power of two in [32, 1024]")


def encoder_layers(channels: int, patch_size: int) -> list[tuple[int, int, int, int, int]]:
    """``(in, out, kernel, stride, padding)`` of every encoder convolution before the bottleneck."""
    extra = max(0, patch_size.bit_length() - (128).bit_length())
    specs = [EXTRA_DOWNSAMPLING] * extra + list(TABLE_I)
    widths = [channels] + [spec[0] for spec in specs]
    return [(widths[i], *specs[i]) for i in range(len(specs))]


class AutoencoderNetwork(nn.Module):
    """Table I encoder, a bottleneck convolution to ``latent_outputs`` channels, and the mirrored
    decoder (transposed convolutions where the encoder strides). Leaky ReLU 0.2 after every
    layer except the encoder's and the decoder's last, which are linear."""

    def __init__(self, channels: int, patch_size: int, latent_dim: int, latent_outputs: int | None = None) -> None:
        super().__init__()
        specs = encoder_layers(channels, patch_size)
        bottleneck = patch_size // 2 ** sum(1 for spec in specs if spec[3] == 2)
        encoder: list[nn.Module] = []
        for width_in, width_out, kernel, stride, padding in specs:
            encoder += [nn.Conv2d(width_in, width_out, kernel, stride, padding), nn.LeakyReLU(LEAKY_SLOPE)]
        encoder.append(nn.Conv2d(specs[-1][1], latent_outputs or latent_dim, bottleneck))
        decoder: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, specs[-1][1], bottleneck), nn.LeakyReLU(LEAKY_SLOPE)]
        for index, (width_in, width_out, kernel, stride, padding) in enumerate(reversed(specs)):
            mirror = nn.ConvTranspose2d if stride == 2 else nn.Conv2d
            decoder.append(mirror(width_out, width_in, kernel, stride, padding))
            if index < len(specs) - 1:
                decoder.append(nn.LeakyReLU(LEAKY_SLOPE))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self._initialise()

    def _initialise(self) -> None:
        """He initialisation for leaky ReLU 0.2 (fan-in), zero biases.

        The paper does not say how it initialises. PyTorch's default shrinks the activations
        through these 18 unnormalised layers, and in a CPU-sized schedule the network then never
        leaves the mean image (measured on ELPV: flat grey reconstructions after 375 steps, where
        He initialisation already draws the bus bars).
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(patches))


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of ``window``-wide windows every ``stride`` px, the last one flush with the border."""
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def random_crops(
    count: int, n_images: int, image_size: int, patch_size: int, generator: torch.Generator
) -> torch.Tensor:
    """``count x 3`` (image, top, left) of uniformly random crops."""
    image = torch.randint(n_images, (count,), generator=generator)
    corners = torch.randint(image_size - patch_size + 1, (count, 2), generator=generator)
    return torch.cat([image[:, None], corners], dim=1)


def gather_patches(images: torch.Tensor, crops: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The ``crops`` (rows of image, top, left) of ``images`` as an ``M x C x P x P`` tensor."""
    return torch.stack([images[i, :, y : y + patch_size, x : x + patch_size] for i, y, x in crops.tolist()])


class ConvolutionalAutoencoder(Detector):
    """Base of the autoencoder family: data, the shared training loop, sliding-window evaluation, state.

    A subclass sets the dissimilarity (``_dissimilarity``: per-pixel loss and residual), and may
    change the loss (``_loss``), how windows are reconstructed (``_reconstruct_windows``) or the
    image score (``image_score``).

    Parameters
    ----------
    image_size : int
        Images are resized to ``image_size x image_size`` before cropping and evaluation (paper: 256).
    patch_size : int
        Side of the training patches and evaluation windows (paper: 128; 256 with ``latent_dim=128``
        is the MVTec AD variant, which adds one strided convolution).
    latent_dim : int
        Size ``d`` of the bottleneck (paper: 100 for textures, 500 for fine structures).
    grey : bool
        Convert images to grey (the paper's setting); otherwise RGB.
    recipe : {"fast", "long", "paper"}
        Training schedule when ``epochs`` / ``n_patches`` are not given: ``"paper"`` is the
        published one, ``"fast"`` (default) fewer epochs so a CPU finishes in minutes, ``"long"``
        as many epochs as fit 60 minutes of the 2-core CPU (``recipes``).
    n_patches : int or None
        Random training patches drawn once (``None`` = the recipe's).
    epochs : int or None
        Passes over the training patches (``None`` = the recipe's).
    learning_rate, weight_decay : float
        Adam settings (paper: 2e-4 and 1e-5).
    patches_per_step : int
        Patches per optimiser step.
    stride : int
        Step between evaluation windows (paper: 30).
    early_stopping : bool
        Hold out ``validation_fraction`` of the training images, track their loss every epoch,
        stop after ``patience`` epochs without improvement and keep the best weights.
    validation_fraction : float
    patience : int
    training_precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the training steps: ``"auto"`` (default) trains in bfloat16 autocast where the device
        computes it in hardware and the method measured it faster at the same quality, float32 elsewhere.
    batch_size : int
        Images per evaluation pass.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    seed : int
        Seeds the crops, the initial weights, the shuffling (and any sampling).
    """

    # "long": 60 minutes at the bfloat16 steps per second of training_speed.json, 15 % left for the rest of the fit
    # (ae_l2 109 ms a step of 32 patches: 80 epochs = 25,000 steps = 45 min)
    recipes: ClassVar[dict[str, dict[str, int]]] = {
        "fast": {"n_patches": 10_000, "epochs": 5},
        "long": {"n_patches": 10_000, "epochs": 80},
        "paper": {"n_patches": 10_000, "epochs": 200},
    }
    # image score (the paper scores pixels only): "max" = maximum of the residual map smoothed
    # with a Gaussian of ``SCORE_SIGMA`` px (a raw maximum is one pixel's noise), "mean" = its mean
    image_score: ClassVar[str] = "max"
    # what training_precision="auto" does where bfloat16 is native (benchmarks/results/training_speed.json)
    bfloat16_training_pays: ClassVar[bool] = True
    opening_shape = "disk"
    default_opening = 4

    _parameter_constraints = {
        "image_size": [Interval(int, 32, 4096)],
        "patch_size": [POWER_OF_TWO],
        "latent_dim": [Interval(int, 1, None)],
        "grey": [BOOLEAN],
        **RECIPE_CONSTRAINTS,
        "n_patches": [NONE, Interval(int, 1, None)],
        "epochs": [NONE, Interval(int, 1, None)],
        "learning_rate": [Interval(float, 0.0, None, "neither")],
        "weight_decay": [Interval(float, 0.0, None)],
        "patches_per_step": [Interval(int, 1, None)],
        "stride": [Interval(int, 1, None)],
        "early_stopping": [BOOLEAN],
        "validation_fraction": [Interval(float, 0.0, 1.0, "neither")],
        "patience": [Interval(int, 1, None)],
        **TRAINING_CONSTRAINTS,
        **RUN_CONSTRAINTS,
    }

    def __init__(
        self,
        *,
        image_size: int = 256,
        patch_size: int = 128,
        latent_dim: int = 100,
        grey: bool = True,
        recipe: str = "fast",
        n_patches: int | None = None,
        epochs: int | None = None,
        learning_rate: float = 2e-4,
        weight_decay: float = 1e-5,
        patches_per_step: int = 32,
        stride: int = 30,
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        patience: int = 10,
        training_precision: str = "auto",
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        self.image_size = image_size
        self.patch_size = patch_size
        self.latent_dim = latent_dim
        self.grey = grey
        self.recipe = recipe
        self.n_patches = n_patches
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.patches_per_step = patches_per_step
        self.stride = stride
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.training_precision = training_precision
        self.batch_size = batch_size
        self.device = device
        self.seed = seed

    # ------------------------------------------------------------------ hooks of the family
    def _dissimilarity(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """Per-pixel dissimilarity ``N x C x H x W``: the training loss sums it, the residual map averages it
        over channels."""
        return (reconstructions - images).square()

    def _latent_outputs(self) -> int:
        return self.latent_dim

    def _patch_losses(self, patches: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        """``(M,)``: the dissimilarity summed over each patch -- the reconstruction term of every loss."""
        return self._dissimilarity(patches, reconstructions).flatten(1).sum(dim=1)

    def _loss(self, patches: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Training loss of one step: the per-patch losses averaged over the patches (``generator``:
        for a loss that samples)."""
        return self._patch_losses(patches, self.network_(patches)).mean()

    def _reconstruct_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """``N x W x C x P x P`` windows -> ``R x N x W x C x P x P`` reconstructions (R = 1 here)."""
        flat = windows.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        reconstructions = in_passes(self.network_, flat, WINDOWS_PER_PASS)
        return reconstructions.reshape(1, *windows.shape)

    # ------------------------------------------------------------------ data
    def _model_input(self, images: torch.Tensor) -> torch.Tensor:
        return luma_batch(images) if self.grey else images

    def _channels(self) -> int:
        return 1 if self.grey else 3

    def schedule(self) -> tuple[int, int]:
        """``(n_patches, epochs)``: the given values, else the recipe's."""
        recipe = self.recipes[self.recipe]
        return self.n_patches or recipe["n_patches"], self.epochs or recipe["epochs"]

    # ------------------------------------------------------------------ fit
    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        if self.patch_size > self.image_size:
            raise ConfigError(f"patch_size={self.patch_size} exceeds image_size={self.image_size}.")
        n_patches, epochs = self.schedule()
        paper_patches, paper_epochs = self.recipes["paper"]["n_patches"], self.recipes["paper"]["epochs"]
        self.training_precision_ = resolve_training_precision(
            self.training_precision, self.device_, self.bfloat16_training_pays
        )
        announce_schedule(
            self.name,
            f"on {n_patches:,} patches x {epochs} epochs in {self.training_precision_}",
            f"{paper_patches:,} x {paper_epochs}",
            paper_patches * paper_epochs / (n_patches * epochs),
        )
        images = torch.cat(list(self._training_batches(dataset, "reading", progress)))
        generator = self._generator()
        train_images, validation_images = self._split_validation(images, generator)
        with self._seeded():  # the layers' initial weights
            self.network_ = self._build_network()
        self._start_at_the_mean(train_images)
        crops = random_crops(n_patches, train_images.shape[0], self.image_size, self.patch_size, generator)
        validation = None
        if validation_images is not None:
            count = max(self.patches_per_step, n_patches // 10)
            validation_crops = random_crops(
                count, validation_images.shape[0], self.image_size, self.patch_size, generator
            )
            validation = gather_patches(validation_images, validation_crops, self.patch_size)
        self._train(train_images, crops, epochs, validation, generator, progress)

    def _start_at_the_mean(self, images: torch.Tensor) -> None:
        """Set the output layer's bias to the training images' mean grey value (per channel).

        A freshly initialised decoder outputs about 0, where SSIM's luminance term is about 0
        and its gradient vanishes: the SSIM loss can sit on that plateau for many epochs (and
        with a large learning rate collapse onto it). Starting from the mean image costs nothing
        and helps every loss; the architecture and the losses are the paper's.
        """
        output_layer: Any = self.network_.decoder[-1]
        with torch.no_grad():
            output_layer.bias.copy_(images.mean(dim=(0, 2, 3)))

    def _split_validation(
        self, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.early_stopping:
            return images, None
        held_out = max(1, round(images.shape[0] * self.validation_fraction))
        if held_out >= images.shape[0]:
            raise DataError(
                f"early_stopping holds out {held_out} of {images.shape[0]} training images and leaves none to train on."
            )
        order = torch.randperm(images.shape[0], generator=generator).to(images.device)
        return images[order[held_out:]], images[order[:held_out]]

    def _build_network(self) -> AutoencoderNetwork:
        network = AutoencoderNetwork(self._channels(), self.patch_size, self.latent_dim, self._latent_outputs())
        return network.to(self.device_).to(memory_format=torch.channels_last)

    def _train(
        self,
        images: torch.Tensor,
        crops: torch.Tensor,
        epochs: int,
        validation: torch.Tensor | None,
        generator: torch.Generator,
        progress: bool,
    ) -> None:
        """Adam over shuffled patches, epoch after epoch; with ``validation`` patches, early stopping."""

        def epoch_batches(generator: torch.Generator) -> Iterator[torch.Tensor]:
            order = torch.randperm(crops.shape[0], generator=generator)
            for start in range(0, crops.shape[0], self.patches_per_step):
                patches = gather_patches(images, crops[order[start : start + self.patches_per_step]], self.patch_size)
                yield patches.contiguous(memory_format=torch.channels_last)

        optimiser = torch.optim.Adam(self.network_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)
        early_stopping = None
        if validation is not None:
            early_stopping = EarlyStopping(
                partial(self._validation_loss, validation, generator), self.network_, patience=self.patience
            )
        loop = TrainingLoop(
            [self.network_],
            optimiser,
            epoch_batches,
            partial(self._loss, generator=generator),
            early_stopping=early_stopping,
            precision=self.training_precision_,
        )
        steps = -(-crops.shape[0] // self.patches_per_step)
        history = loop.run(epochs=epochs, steps_per_epoch=steps, generator=generator, progress=progress)
        self.loss_history_ = history.epoch_losses
        self.validation_history_ = history.validation

    def _validation_loss(self, patches: torch.Tensor, generator: torch.Generator) -> float:
        self.network_.eval()
        with torch.no_grad():
            losses = [
                float(self._loss(chunk.contiguous(memory_format=torch.channels_last), generator)) * chunk.shape[0]
                for chunk in patches.split(self.patches_per_step)
            ]
        return sum(losses) / patches.shape[0]

    # ------------------------------------------------------------------ predict
    def reconstruct(self, batch: torch.Tensor) -> torch.Tensor:
        """``N x C x S x S`` images -> ``R x N x C x S x S``: windows every ``stride`` px reconstructed
        and the overlapping reconstructions averaged (R = 1, or the VAE's samples)."""
        size = batch.shape[-1]
        starts = window_starts(size, self.patch_size, self.stride)
        corners = [(y, x) for y in starts for x in starts]
        windows = torch.stack(
            [batch[:, :, y : y + self.patch_size, x : x + self.patch_size] for y, x in corners], dim=1
        )
        reconstructions = self._reconstruct_windows(windows)
        total = torch.zeros(reconstructions.shape[0], *batch.shape, device=batch.device)
        count = torch.zeros(size, size, device=batch.device)
        for index, (y, x) in enumerate(corners):
            total[..., y : y + self.patch_size, x : x + self.patch_size] += reconstructions[:, :, index]
            count[y : y + self.patch_size, x : x + self.patch_size] += 1
        return total / count

    def _score_batch(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        reconstructions = self.reconstruct(batch)
        samples = reconstructions.shape[0]
        repeated = batch.expand(samples, *batch.shape).flatten(0, 1)
        residual = self._dissimilarity(repeated, reconstructions.flatten(0, 1)).mean(dim=1)  # (R N) x S x S
        maps = residual.view(samples, -1, *residual.shape[-2:]).mean(dim=0)
        if self.image_score == "mean":
            scores = maps.flatten(1).mean(dim=1)
        else:
            scores = gaussian_blur(maps, SCORE_SIGMA).flatten(1).amax(dim=1)
        return scores, maps

    # ------------------------------------------------------------------ state
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return module_tensors("network", self.network_)

    def _state_meta(self) -> dict[str, Any]:
        n_patches, epochs = self.schedule()
        return {
            "n_patches": n_patches,
            "epochs": epochs,
            "epochs_run": len(self.loss_history_),
            "training_precision": self.training_precision_,
            "loss_history": self.loss_history_,
            "validation_history": self.validation_history_,
        }

    def _restore(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.network_ = self._build_network()
        restore_module(self.network_, tensors, "network").eval()
        self.loss_history_ = list(meta["loss_history"])
        self.validation_history_ = list(meta["validation_history"])
        self.training_precision_ = saved_training_precision(meta)


class L2Autoencoder(ConvolutionalAutoencoder):
    """L2 autoencoder (Bergmann et al. 2019, Sec. 3.1.1): per-pixel squared error as loss and residual."""


class SSIMAutoencoder(ConvolutionalAutoencoder):
    """SSIM autoencoder (Bergmann et al. 2019, Sec. 3.1.4): ``1 - SSIM`` as loss and residual.

    Parameters
    ----------
    ssim_window : int
        Side ``K`` of the SSIM window (odd; paper: 11). Every other parameter is that of
        :class:`ConvolutionalAutoencoder`.
    """

    _parameter_constraints = {**ConvolutionalAutoencoder._parameter_constraints, "ssim_window": [Interval(int, 1, 63)]}
    # 202 ms a step: 45 epochs = 14,000 steps = 47 min
    recipes = {**ConvolutionalAutoencoder.recipes, "long": {"n_patches": 10_000, "epochs": 45}}

    def __init__(self, *, ssim_window: int = 11, **params: Any) -> None:
        super().__init__(**params)
        self.ssim_window = ssim_window

    def _fit(self, dataset: ImageDataset, progress: bool) -> None:
        if self.ssim_window % 2 == 0:
            raise ConfigError(f"ssim_window must be odd. Got {self.ssim_window} instead.")
        super()._fit(dataset, progress)

    def _dissimilarity(self, images: torch.Tensor, reconstructions: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim_map(reconstructions, images, self.ssim_window)


class MSEAutoencoder(ConvolutionalAutoencoder):
    """The plain autoencoder of the lecture slides: whole RGB images, score = mean squared error.

    Defaults differ from the patch autoencoders: ``patch_size=256`` (the whole resized image, the
    MVTec AD paper's 256-px network), ``latent_dim=128``, ``grey=False``; ``n_patches`` counts
    image presentations. Threshold: ``calibrate``'s default, mean + 3 std of good scores.
    """

    # "long" from the float32 fit of the fast recipe (148 s for 313 steps on magnetic tile): 6,250 steps = 49 min
    recipes: ClassVar[dict[str, dict[str, int]]] = {
        "fast": {"n_patches": 2_000, "epochs": 5},
        "long": {"n_patches": 10_000, "epochs": 20},
        "paper": {"n_patches": 10_000, "epochs": 100},
    }
    image_score = "mean"
    default_threshold = ThresholdRule("sigma", k=3.0)  # the slides' mean + 3 std of good scores
    bfloat16_training_pays = False  # not measured for the whole-image network: "auto" trains it in float32

    def __init__(self, *, patch_size: int = 256, latent_dim: int = 128, grey: bool = False, **params: Any) -> None:
        super().__init__(patch_size=patch_size, latent_dim=latent_dim, grey=grey, **params)


# small patch autoencoders for tests: 64 px images, 32 px patches
PATCH_TEST_PARAMS = {"image_size": 64, "patch_size": 32, "latent_dim": 16, "n_patches": 256, "epochs": 2, "stride": 16}
register_detector("ae_l2", L2Autoencoder, test_params=PATCH_TEST_PARAMS)
register_detector("ae_ssim", SSIMAutoencoder, test_params=PATCH_TEST_PARAMS)
register_detector(
    "ae_mse",
    MSEAutoencoder,
    test_params={"image_size": 64, "patch_size": 64, "latent_dim": 16, "n_patches": 64, "epochs": 2},
)
