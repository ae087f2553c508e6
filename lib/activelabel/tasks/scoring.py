"""The ``epistemic`` scoring method: MC-dropout uncertainty of every unlabeled volume."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from torch import nn

from activelabel.config import Settings
from activelabel.ml.checkpoints import ModelStore
from activelabel.ml.inference import load_model
from activelabel.scoring.backends import make_backend
from activelabel.scoring.distributed import score_distributed
from activelabel.scoring.refresh import next_candidates
from activelabel.scoring.scorer import ScoringOptions, embed_pool, score_pool
from activelabel.store.presegmentations import PresegmentationStore
from activelabel.store.scores import ScoreStore


class EpistemicScoring(ScoringMethod):
    """Scores unlabeled volumes whose stored score is not from the current model.

    With the ``presegment`` setting each scored volume's mean-prediction label is kept as its
    pre-segmentation by that model version, which the ``segmentation`` infer task then serves.
    Labeled volumes get a bottleneck embedding (one deterministic pass) so that the
    diversity-aware strategy can compare candidates with them.

    Request keys (all optional): ``mc_samples`` (passes per volume), ``force`` (rescore
    fresh images too).

    Args:
        settings: the app's resolved settings.
        model_store: where the current model is published.
        score_store: where scores are kept.
        presegmentations: where pre-segmentations are kept.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        model_store: ModelStore,
        score_store: ScoreStore,
        presegmentations: PresegmentationStore,
    ) -> None:
        super().__init__(
            "Monte-Carlo dropout epistemic uncertainty (entropy, mutual information, variance) "
            "over the dilated predicted foreground"
        )
        self.settings = settings
        self.model_store = model_store
        self.score_store = score_store
        self.presegmentations = presegmentations

    def info(self) -> dict[str, Any]:
        info = super().info()
        info["config"] = {
            "mc_samples": self.settings.mc_samples,
            "mc_mode": self.settings.mc_mode.value,
            "foreground_dilation": self.settings.foreground_dilation,
            "metrics": ["entropy", "mutual_information", "variance"],
        }
        return info

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        samples = int(request.get("mc_samples", self.settings.mc_samples))
        if samples < 1:
            raise ValueError(f"mc_samples must be >= 1, got {samples}")
        force = str(request.get("force", "false")).lower() in ("1", "true", "yes")
        network, info = load_model(self.model_store, device=self.settings.device)
        # The head of the ranking first: the volumes served next get their fresh score and
        # pre-segmentation first.
        unlabeled = datastore.get_unlabeled_images()
        order = next_candidates(
            unlabeled, scores=self.score_store, metric=self.settings.uncertainty_metric, leased=(), count=len(unlabeled)
        )
        images = {image_id: datastore.get_image_uri(image_id) for image_id in order}
        report = self._score_unlabeled(
            images,
            network=network,
            model_version=info.version,
            options=self.settings.scoring_options(samples=samples, force=force),
        )
        labeled = {image_id: datastore.get_image_uri(image_id) for image_id in datastore.get_labeled_images()}
        embedded = embed_pool(
            labeled,
            network=network,
            model_version=info.version,
            preset=self.settings.preset,
            store=self.score_store,
            overlap=self.settings.sw_overlap,
            bf16=self.settings.bf16,
        )
        return {**report, "labeled_embedded": embedded}

    def _score_unlabeled(
        self, images: dict[str, str], *, network: nn.Module, model_version: int, options: ScoringOptions
    ) -> dict[str, Any]:
        """Score ``images`` here, one after the other, or on workers when configured.

        With ``ray_address`` the images go to Ray tasks on that cluster; with ``scoring_workers``
        above 1 to that many local processes.  Either way each score is stored as it arrives.
        """
        address, workers = self.settings.ray_address, self.settings.scoring_workers
        if not address and (workers or 1) <= 1:
            return score_pool(
                images,
                network=network,
                model_version=model_version,
                preset=self.settings.preset,
                store=self.score_store,
                options=options,
                labels=self.settings.labels,
                presegmentations=self.presegmentations,
            ).to_dict()
        return score_distributed(
            images,
            model_store=self.model_store,
            preset=self.settings.preset,
            store=self.score_store,
            options=options,
            backend=make_backend(address=address, workers=workers),
            device=self.settings.device,
            labels=self.settings.labels,
            presegmentations=self.presegmentations,
        ).to_dict()
