"""BiomedCLIP through open_clip (timm ``vit_base_patch16_224`` image tower), image tower only.

224x224 (shortest edge resize + centre crop, as open_clip's eval transform), OpenAI CLIP
mean/std. Global = the projected 512-d image embedding (``visual(x)``, what ``encode_image``
returns before normalisation); the trunk's 768-d [CLS] is kept as the extra global
``cls_trunk``; patches = ``visual.trunk.forward_features(x)[:, 1:]`` as 14x14x768.

Offline: BiomedCLIP's hub config builds its text tower from a Hugging Face config that needs
the network, so radstore builds only the image tower from ``open_clip_config.json``
(open_clip's own ``_build_vision_tower``) and loads the ``visual.*`` weights of the local
checkpoint. Extraction never needs the text tower.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from featurestore.encoders.base import EmbedOutput, Encoder
from featurestore.encoders.preprocess import PARITY, Preprocessing
from featurestore.encoders.registry import register
from featurestore.encoders.weights import MissingWeightsError, WeightFiles, WeightsSource, cache_dir

HUB_REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_model_cfg(text_config_dir: str | None = None) -> dict:
    """A BiomedCLIP-shaped config: timm ViT image tower + HF text tower, tiny."""
    cfg = {
        "embed_dim": 16,
        "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "linear",
            "image_size": 224,
        },
    }
    if text_config_dir:
        cfg["text_cfg"] = {
            "hf_model_name": text_config_dir,
            "hf_tokenizer_name": text_config_dir,
            "hf_proj_type": "mlp",
            "hf_pooler_type": "cls_last_hidden_state_pooler",
            "context_length": 16,
        }
    return cfg


def build_random(kind: str, name: str, seed: int = 0) -> str:
    """Write an open_clip folder (``open_clip_config.json`` + weights) with random weights."""
    from open_clip.model import _build_vision_tower

    folder = cache_dir() / kind.replace(":", "-") / f"{name}-seed{seed}"
    if not (folder / "open_clip_config.json").exists():
        torch.manual_seed(seed)
        if kind == "random:tiny":
            model_cfg = tiny_model_cfg()
        else:
            model_cfg = {
                "embed_dim": 512,
                "vision_cfg": {
                    "timm_model_name": "vit_base_patch16_224",
                    "timm_model_pretrained": False,
                    "timm_pool": "",
                    "timm_proj": "linear",
                    "image_size": 224,
                },
            }
        visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"])
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, folder / "open_clip_pytorch_model.bin")
        cfg = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}}
        (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    return str(folder)


def checkpoint_of(folder: Path) -> Path:
    """The checkpoint open_clip itself would load from ``folder`` (its own preference among
    ``*.safetensors``, ``*.bin``, ``*.pth``); raises MissingWeightsError when there is none."""
    from open_clip.factory import _find_checkpoint_in_dir

    ckpt = _find_checkpoint_in_dir(folder)
    if ckpt is None:
        raise MissingWeightsError(f"{folder} has no checkpoint (*.safetensors, *.bin, *.pth)")
    return Path(ckpt)


def load_visual(folder: Path) -> tuple[torch.nn.Module, dict]:
    """open_clip's image tower from a local folder, without building the text tower: the
    checkpoint's ``visual.*`` tensors, all of them (strict); its text tower's tensors (BiomedCLIP's
    BERT, integer buffers included) and ``logit_scale`` are read and dropped."""
    from open_clip.factory import load_state_dict
    from open_clip.model import _build_vision_tower

    cfg_path = folder / "open_clip_config.json"
    if not cfg_path.exists():
        raise MissingWeightsError(f"{folder} has no open_clip_config.json: not an open_clip model folder")
    cfg = json.loads(cfg_path.read_text())
    model_cfg = cfg["model_cfg"]
    ckpt = checkpoint_of(folder)
    visual = _build_vision_tower(model_cfg["embed_dim"], model_cfg["vision_cfg"])
    state = load_state_dict(str(ckpt))
    vis = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
    visual.load_state_dict(vis, strict=True)
    return visual.eval(), cfg


def preprocess_from_config(pre: dict, size: int, bits: int = 8) -> Preprocessing:
    """open_clip's eval transform (``image_transform``) as described by ``open_clip_config.json``'s
    ``preprocess_cfg``: ``resize_mode`` "shortest" (torchvision ``Resize`` of the shortest edge +
    ``CenterCrop``, whose offset rounds) or "squash", ``interpolation``, mean and std (OpenAI
    CLIP's when absent, as open_clip's own default)."""
    from featurestore.errors import RadstoreError

    mode = pre.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise RadstoreError(f"open_clip resize_mode {mode!r} is not supported by radstore (use 'shortest' or 'squash')")
    interpolation = pre.get("interpolation", "bicubic")
    if interpolation not in ("bicubic", "bilinear"):
        raise RadstoreError(f"open_clip interpolation {interpolation!r} is not supported by radstore (use 'bicubic' or 'bilinear')")
    return Preprocessing(
        size=size,
        mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)),
        resize="shortest_edge_crop" if mode == "shortest" else "squash",
        interpolation=interpolation,
        crop_offset="round",
        resampler="pil",  # torchvision's Resize on a PIL image calls Image.resize
        bits=bits,
    )


class OpenClipEncoder(Encoder):
    """BiomedCLIP's image tower (open_clip, timm ViT trunk): the projected embedding as the global
    vector, the trunk's [CLS] as the extra ``cls_trunk`` vector, the patch tokens as the grid."""

    def __init__(
        self,
        name: str,
        visual: torch.nn.Module,
        embed_dim: int,
        size: int = 224,
        bits: int = 8,
        weights_label: str = "unknown",
        preprocess_cfg: dict | None = None,
    ):
        self.visual = self.module = visual.eval()
        self.name = name
        self.preprocessing = preprocess_from_config(preprocess_cfg or {}, size, bits)
        trunk = self.visual.trunk
        width = trunk.embed_dim
        ph, pw = trunk.patch_embed.patch_size
        self.grid = (width, size // ph, size // pw)
        self.global_dim = int(embed_dim)
        self.extra_globals = {"cls_trunk": width}
        self.prefix_tokens = int(getattr(trunk, "num_prefix_tokens", 1))
        self.labels = {"weights": weights_label, "model_class": f"open_clip {type(self.visual).__name__}/{type(trunk).__name__}"}
        self.device = torch.device("cpu")

    @classmethod
    def load(cls, name: str, source: WeightsSource, size: int | None = None, bits: int = 8) -> OpenClipEncoder:
        """Load the vision tower from the source's folder (or a random one); the input size is fixed by the
        checkpoint, so a different ``size`` raises RadstoreError instead of being interpolated."""
        folder = Path(source.path) if source.path else Path(build_random(source.kind, name))
        visual, cfg = load_visual(folder)
        native = int(cfg["model_cfg"]["vision_cfg"].get("image_size", 224))
        if size not in (None, native):
            from featurestore.errors import RadstoreError

            raise RadstoreError(f"{name}: the timm tower has fixed {native}x{native} position embeddings; --size {size} is not supported")
        if "preprocess_cfg" not in cfg:
            import warnings

            warnings.warn(
                f"{folder}/open_clip_config.json has no preprocess_cfg: using open_clip's defaults (OpenAI CLIP mean/std, "
                "shortest-edge resize, bicubic); add it if the weights expect others",
                stacklevel=2,
            )
        encoder = cls(name, visual, cfg["model_cfg"]["embed_dim"], native, bits, source.label, cfg.get("preprocess_cfg", {}))
        encoder.weight_files = WeightFiles((checkpoint_of(folder),), tower="visual.")
        return encoder

    def embed(self, batch: torch.Tensor) -> EmbedOutput:
        """One pass through the trunk gives all three outputs: projected global, trunk [CLS] (in
        ``extras``) and the normed patch tokens after the prefix tokens."""
        tokens = self.visual.trunk.forward_features(batch)  # [B, 1 + N, C], after the final norm
        # visual(x) = head(trunk(x)); with pool '' the trunk's forward_head takes token 0.
        projected = self.visual.head(self.visual.trunk.forward_head(tokens))
        return EmbedOutput(global_=projected, patches=self.to_grid(tokens[:, self.prefix_tokens :]), extras={"cls_trunk": tokens[:, 0]})


@register(
    "biomedclip",
    hub_repo=HUB_REPO,
    order=2,
    processor=f"open_clip `image_transform` (eval) from `open_clip_config.json`; {PARITY}",
    summary=(
        "`microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`, open_clip timm ViT-B/16 | "
        "224, OpenAI CLIP mean/std | "
        "projected image embedding, 512 (+ trunk [CLS] 768 as column `cls_trunk`) | "
        "`visual.trunk.forward_features(x)[:, 1:]`, 14x14x768"
    ),
)
def load(name: str, source: WeightsSource, size: int | None = None, bits: int | None = None) -> OpenClipEncoder:
    """BiomedCLIP's image tower from its open_clip folder (input size from its config)."""
    return OpenClipEncoder.load(name, source, size=size, bits=bits or 8)
