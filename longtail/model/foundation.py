"""Foundation-model backbones (timm, open_clip) behind the one multi-expert wrapper (docs/foundation_models.md).

The libraries build the networks and load their own weight files; this module only splits a built network into the
wrapper's shared ``trunk`` and per-expert ``branch``:

* ``expert_blocks = 0``: the trunk is the whole backbone up to its pooled features and every expert is a head on
  them (E heads on one backbone: one backbone pass for any number of experts).
* ``expert_blocks = k > 0`` (ViTs): the trunk runs the first L - k transformer blocks once; each expert owns a copy
  of the last k blocks and the final norm / pooling (cost (L + (E - 1) k) / L backbone passes). With a frozen base
  and per-expert adapters (``arch.peft``) the experts are E lightweight adapters on one frozen backbone.

Weights: ``pretrained_file`` (a file the library saved: a timm / open_clip state dict, ``.safetensors`` or
``.pth``/``.bin``), else the library's own download; offline without the file the build stops with one error that
names the weights and where to put them. The file's SHA-256 is recorded in the resolved config
(``arch.args.pretrained_sha256``) and in every checkpoint (``base``); a different file is refused.
Preprocessing (size, resize, interpolation, mean, std) comes from the pretrained model's own data config
(:func:`timm_input_config`, :func:`open_clip_input_config`); core/build.py writes it into ``data_loader.args.input``.
"""
from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from longtail.model.experts import BaseWeights, MultiExpertModel
from longtail.registry import MODELS
from longtail.utils.errors import CheckpointError, ConfigError

_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, computed once per process for an unchanged file (path, size, mtime)."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise ConfigError(f"pretrained weights file not found: {path} (arch.args.pretrained_file)") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA_CACHE:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _SHA_CACHE[key] = digest.hexdigest()
    return _SHA_CACHE[key]


def check_recorded_sha(path: str, recorded: str | None, where: str) -> str:
    """The file's SHA-256; a file that differs from the one the config (or checkpoint) recorded is refused."""
    actual = file_sha256(path)
    if recorded is not None and recorded != actual:
        raise CheckpointError(f"{path} has SHA-256 {actual[:16]}... but {where} was made with a file of SHA-256 "
                              f"{recorded[:16]}...: these are different weights. Put the original file back (or "
                              "start a new run with --set arch.args.pretrained_sha256=null)")
    return actual


def offline_error(library: str, model: str, how: str, reason: str) -> ConfigError:
    """The one error of a build that needs pretrained weights it cannot find or download."""
    return ConfigError(f"pretrained weights {library}:{model} are not available here ({reason}). {how} Then set "
                       "arch.args.pretrained_file=/path/to/that/file (or --set arch.args.pretrained_file=...); "
                       "docs/foundation_models.md lists the files of the shipped configs")


# ----------------------------------------------------------------------------------------- model families
class TimmViTFamily:
    """timm VisionTransformer (ViT, DeiT, CLIP towers in timm): patch_embed -> _pos_embed -> blocks -> norm -> pool."""

    embed_parts = ("patch_embed", "cls_token", "reg_token", "pos_embed", "pos_drop", "patch_drop", "norm_pre")
    finish_parts = ("norm", "fc_norm", "attn_pool", "head_drop", "head")
    attention_targets = ("qkv",)  # LoRA (HF peft) target module names inside a block
    norm2, mlp = "norm2", "mlp"

    @staticmethod
    def matches(backbone: nn.Module) -> bool:
        return all(hasattr(backbone, a) for a in ("patch_embed", "_pos_embed", "blocks", "forward_head"))

    @staticmethod
    def blocks(backbone: nn.Module) -> nn.Module:
        return backbone.blocks

    @staticmethod
    def set_blocks(backbone: nn.Module, blocks: nn.Module) -> None:
        backbone.blocks = blocks

    @staticmethod
    def seq_len(backbone: nn.Module) -> int:
        """Tokens after embedding (prefix + patches): prompts appended after them are dropped before pooling."""
        return int(backbone.patch_embed.num_patches + backbone.num_prefix_tokens)

    @staticmethod
    def embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = backbone.patch_embed(x)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        return backbone.norm_pre(x)

    @staticmethod
    def run_blocks(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone.blocks(x)

    @staticmethod
    def finish(backbone: nn.Module, x: torch.Tensor, project: bool) -> torch.Tensor:
        return backbone.forward_head(backbone.norm(x), pre_logits=True)

    @staticmethod
    def feature_dim(backbone: nn.Module, project: bool) -> int:
        return int(backbone.num_features)


class OpenClipViTFamily:
    """open_clip VisionTransformer: _embeds -> transformer.resblocks -> _pool (ln_post) -> optional proj."""

    embed_parts = ("conv1", "class_embedding", "positional_embedding", "patch_dropout", "ln_pre")
    finish_parts = ("ln_post", "attn_pool", "attn_pool_contrastive", "proj")
    attention_targets = ("attn",)  # nn.MultiheadAttention (HF peft wraps its in_proj and out_proj)
    norm2, mlp = "ln_2", "mlp"

    @staticmethod
    def matches(backbone: nn.Module) -> bool:
        return all(hasattr(backbone, a) for a in ("_embeds", "_pool", "transformer"))

    @staticmethod
    def blocks(backbone: nn.Module) -> nn.Module:
        return backbone.transformer.resblocks

    @staticmethod
    def set_blocks(backbone: nn.Module, blocks: nn.Module) -> None:
        backbone.transformer.resblocks = blocks

    @staticmethod
    def seq_len(backbone: nn.Module) -> int:
        return int(backbone.positional_embedding.shape[0])

    @staticmethod
    def embed(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone._embeds(x)

    @staticmethod
    def run_blocks(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return backbone.transformer(x)

    @staticmethod
    def finish(backbone: nn.Module, x: torch.Tensor, project: bool) -> torch.Tensor:
        pooled, _ = backbone._pool(x)
        return pooled @ backbone.proj if project and backbone.proj is not None else pooled

    @staticmethod
    def feature_dim(backbone: nn.Module, project: bool) -> int:
        if project and backbone.proj is not None:
            return int(backbone.proj.shape[1])
        return int(backbone.transformer.width)


class PooledFamily:
    """Any other timm model (ConvNeXt, ResNet, Swin, EVA ...): its whole forward is the trunk (num_classes=0 gives
    pooled pre-logits features); no per-expert blocks, no token-level adapters."""

    embed_parts: tuple[str, ...] = ()
    finish_parts: tuple[str, ...] = ()
    attention_targets: tuple[str, ...] = ()

    @staticmethod
    def feature_dim(backbone: nn.Module, project: bool) -> int:
        return int(backbone.num_features)


def strip(backbone: nn.Module, parts: Sequence[str]) -> None:
    """Remove the named children / parameters (they belong to another part of the split)."""
    for name in parts:
        if name in backbone._parameters:
            backbone._parameters[name] = None
        elif name in backbone._modules and backbone._modules[name] is not None:
            backbone._modules[name] = nn.Identity()


class FoundationTrunk(nn.Module):
    """The shared part: embedding and the first blocks (tokens out), or the whole backbone (pooled features out)."""

    def __init__(self, backbone: nn.Module, family: type, finish: bool, project: bool) -> None:
        super().__init__()
        self.backbone, self.family, self.finishes, self.project = backbone, family, finish, project
        self.seq_len = family.seq_len(backbone) if hasattr(family, "seq_len") else 0

    def token_modules(self) -> list[nn.Module]:
        """The transformer blocks run here (empty for pooled families)."""
        return list(self.family.blocks(self.backbone)) if hasattr(self.family, "blocks") else []

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        if not hasattr(self.family, "embed"):
            return self.backbone(x)
        x = self.family.run_blocks(self.backbone, self.family.embed(self.backbone, x))
        if self.finishes:  # prompt tokens (VPT) follow the first seq_len tokens and are dropped before pooling
            return self.family.finish(self.backbone, x[:, :self.seq_len], self.project)
        return x


class FoundationTail(nn.Module):
    """One expert's last blocks, final norm and pooling (a copy of the backbone without its embedding)."""

    def __init__(self, backbone: nn.Module, family: type, project: bool, seq_len: int) -> None:
        super().__init__()
        self.backbone, self.family, self.project, self.seq_len = backbone, family, project, seq_len

    def token_modules(self) -> list[nn.Module]:
        return list(self.family.blocks(self.backbone))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.family.run_blocks(self.backbone, x)
        return self.family.finish(self.backbone, x[:, :self.seq_len], self.project)


class FoundationBranch(nn.Module):
    """Per-expert part: nothing (experts share the pooled features) or one FoundationTail per expert."""

    runs_experts = True

    def __init__(self, num_experts: int, tails: Sequence[FoundationTail] = ()) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.tails = nn.ModuleList(tails)

    def forward(self, shared: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        if not len(self.tails):
            if expert is not None:
                return shared
            return shared.unsqueeze(1).expand(-1, self.num_experts, -1)
        if expert is not None:
            return self.tails[expert](shared)
        return torch.stack([tail(shared) for tail in self.tails], dim=1)


def family_of(backbone: nn.Module) -> type:
    """The family whose forward pieces the backbone has."""
    for family in (OpenClipViTFamily, TimmViTFamily):
        if family.matches(backbone):
            return family
    return PooledFamily


def split_backbone(backbone: nn.Module, num_experts: int, expert_blocks: int, project: bool,
                   where: str) -> tuple[FoundationTrunk, FoundationBranch, int]:
    """(trunk, branch, feature dim) of a built backbone with ``expert_blocks`` per-expert blocks at its end."""
    family = family_of(backbone)
    dim = family.feature_dim(backbone, project)
    if expert_blocks == 0:
        return FoundationTrunk(backbone, family, True, project), FoundationBranch(num_experts), dim
    if family is PooledFamily:
        raise ConfigError(f"{where}.expert_blocks = {expert_blocks} needs a transformer with blocks (a ViT); "
                          f"{type(backbone).__name__} runs as one piece: use expert_blocks 0 (E heads on one backbone)")
    blocks = family.blocks(backbone)
    if not 0 < expert_blocks <= len(blocks):
        raise ConfigError(f"{where}.expert_blocks must be between 0 and the {len(blocks)} blocks of the backbone, "
                          f"got {expert_blocks}")
    first = len(blocks) - expert_blocks
    seq_len = family.seq_len(backbone)
    tails = []
    for _ in range(num_experts):
        tail = copy.deepcopy(backbone)
        family.set_blocks(tail, type(blocks)(*list(family.blocks(tail))[first:]) if isinstance(blocks, nn.Sequential)
                          else nn.ModuleList(list(family.blocks(tail))[first:]))
        strip(tail, family.embed_parts)
        tails.append(FoundationTail(tail, family, project, seq_len))
    family.set_blocks(backbone, type(blocks)(*list(blocks)[:first]) if isinstance(blocks, nn.Sequential)
                      else nn.ModuleList(list(blocks)[:first]))
    strip(backbone, family.finish_parts)
    return FoundationTrunk(backbone, family, False, project), FoundationBranch(num_experts, tails), dim


def wrap(backbone: nn.Module, identity: dict[str, Any] | None, num_classes: int, num_experts: int, use_norm: bool,
         s: float, expert_blocks: int, project: bool, where: str) -> MultiExpertModel:
    """The multi-expert model over a built backbone; records where its weights came from."""
    trunk, branch, dim = split_backbone(backbone, num_experts, expert_blocks, project, where)
    model = MultiExpertModel(trunk, branch, dim, num_classes, num_experts, use_norm, s)
    if identity is not None:
        model.base_weights = BaseWeights(identity, list(trunk.parameters()) + list(branch.parameters()))
    return model


def token_blocks(model: nn.Module) -> list[tuple[nn.Module, type, int | None]]:
    """Every transformer block of a foundation model with its family and expert (None: shared by all experts)."""
    trunk, branch = getattr(model, "trunk", None), getattr(model, "branch", None)
    if not isinstance(trunk, FoundationTrunk):
        return []
    found = [(block, trunk.family, None) for block in trunk.token_modules()]
    if isinstance(branch, FoundationBranch):
        for expert, tail in enumerate(branch.tails):
            found += [(block, tail.family, expert) for block in tail.token_modules()]
    return found


def final_seq_len(model: nn.Module) -> int:
    """Tokens after embedding (0 for pooled families)."""
    trunk = getattr(model, "trunk", None)
    return int(getattr(trunk, "seq_len", 0))


# ----------------------------------------------------------------------------------------- timm
def timm_pretrained_cfg(model_name: str) -> Any:
    """timm's pretrained config of ``name[.tag]`` (its default tag when none is given)."""
    import timm.models

    if not timm.is_model(model_name.split(".")[0]):
        raise ConfigError(f"arch.args.model_name: timm has no model {model_name.split('.')[0]!r} "
                          "(timm.list_models() lists them)")
    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None:
        raise ConfigError(f"arch.args.model_name: timm has no pretrained tag {model_name!r} "
                          f"(timm.list_pretrained('{model_name.split('.')[0]}*') lists them)")
    return cfg


def timm_input_config(args: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Preprocessing from the timm model's pretrained data config (timm.data.resolve_data_config): crop size,
    short-side resize = floor(size / crop_pct), interpolation, mean, std."""
    from timm.data import resolve_data_config

    name = args.get("model_name", "")
    data = resolve_data_config({}, pretrained_cfg=timm_pretrained_cfg(name).to_dict())
    size = int(args.get("img_size") or data["input_size"][-1])
    return {"size": size, "resize": int(math.floor(size / data["crop_pct"])), "interpolation": data["interpolation"],
            "mean": [float(v) for v in data["mean"]], "std": [float(v) for v in data["std"]],
            "source": f"timm:{timm_pretrained_cfg(name).architecture}.{timm_pretrained_cfg(name).tag}"}


def _download_timm(cfg: Any) -> str:
    """The file timm's own download would load for ``cfg`` (Hugging Face hub, else its URL)."""
    if cfg.hf_hub_id:
        from huggingface_hub import hf_hub_download

        last: Exception | None = None
        for filename in ([cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]):
            try:
                return hf_hub_download(cfg.hf_hub_id, filename)
            except Exception as exc:  # offline, missing file: try the next name
                last = exc
        raise OSError(str(last).splitlines()[0] if last else "no file")
    if cfg.url:
        from timm.models._hub import download_cached_file

        return download_cached_file(cfg.url)
    raise OSError("timm lists no download source for it")


def resolve_timm_block(block: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Check the model name and record the weights file's SHA-256 (arch.args.pretrained_sha256)."""
    args = block["args"]
    if not isinstance(args.get("model_name"), str):
        raise ConfigError("arch.args.model_name must name a timm model, e.g. \"vit_base_patch16_224.augreg_in21k\"")
    timm_pretrained_cfg(args["model_name"])
    if args.get("pretrained_file"):
        sha = check_recorded_sha(args["pretrained_file"], args.get("pretrained_sha256"), "arch.args.pretrained_sha256")
        args = {**args, "pretrained_sha256": sha}
    return {**block, "args": args}


@MODELS.register("timm")
def timm_model(num_classes: int, model_name: str, in_channels: int = 3, pretrained: bool = True,
               pretrained_file: str | None = None, pretrained_sha256: str | None = None, num_experts: int = 1,
               use_norm: bool = True, s: float = 30.0, expert_blocks: int = 0, img_size: int | None = None,
               drop_path_rate: float = 0.0, model_kwargs: dict | None = None,
               load_weights: bool = True) -> MultiExpertModel:
    """Any ``timm.create_model`` name (``name.tag`` picks the weights) as the backbone of E experts with cosine
    (use_norm, scale s) or linear heads; ``expert_blocks`` last ViT blocks per expert (0: E heads on one backbone).
    Weights: ``pretrained_file`` (timm's state dict, .safetensors / .pth), else timm's download when pretrained."""
    import timm

    kwargs = {"num_classes": 0, "in_chans": in_channels, "drop_path_rate": drop_path_rate, **(model_kwargs or {})}
    if img_size is not None:
        kwargs["img_size"] = img_size
    cfg = timm_pretrained_cfg(model_name)
    identity = None
    if pretrained and load_weights:
        path = pretrained_file
        if path is None:
            try:
                path = _download_timm(cfg)
            except Exception as exc:  # offline: one clear error
                source = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else cfg.url
                raise offline_error("timm", model_name, f"Download model.safetensors from {source} on a machine with "
                                    "internet (or run: python -c \"import timm; timm.create_model('" + model_name +
                                    "', pretrained=True)\" and copy the file from the Hugging Face cache) and copy "
                                    "it here.", str(exc).splitlines()[0]) from None
        sha = check_recorded_sha(path, pretrained_sha256, "arch.args.pretrained_sha256")
        try:
            backbone = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)},
                                         **kwargs)
        except (RuntimeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} does not fit timm model {model_name} (arch.args.pretrained_file): "
                                  f"{str(exc).splitlines()[0]}") from None
        identity = {"library": "timm", "model": cfg.architecture, "tag": cfg.tag, "file": str(path), "sha256": sha}
    else:
        backbone = timm.create_model(model_name, pretrained=False, **kwargs)
    return wrap(backbone, identity, num_classes, num_experts, use_norm, s, expert_blocks, False, "arch.args")


timm_model.resolve_block = resolve_timm_block  # type: ignore[attr-defined]
timm_model.input_config = timm_input_config  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------- open_clip
def register_open_clip_config(path: str | None) -> None:
    """Make a custom open_clip model config (JSON file named <model>.json) known to open_clip."""
    if path:
        import open_clip

        if not Path(path).is_file():
            raise ConfigError(f"arch.args.model_config_file not found: {path}")
        open_clip.add_model_config(path)


def open_clip_model_config(args: dict[str, Any]) -> dict[str, Any]:
    """open_clip's config of the named model (after registering a custom config file)."""
    import open_clip

    register_open_clip_config(args.get("model_config_file"))
    model_cfg = open_clip.get_model_config(args.get("model_name", ""))
    if model_cfg is None:
        raise ConfigError(f"arch.args.model_name: open_clip has no model {args.get('model_name')!r} "
                          "(open_clip.list_models() lists them; a custom one needs arch.args.model_config_file)")
    return model_cfg


def open_clip_input_config(args: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Preprocessing from open_clip's preprocess config of the model and tag (size, interpolation, mean, std; the
    eval resize is the crop size: open_clip resizes the short side to the crop size)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    model_cfg = open_clip_model_config(args)
    tag = args.get("pretrained")
    pre = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(args["model_name"], tag) if tag else {})
    size = model_cfg["vision_cfg"].get("image_size", pre["size"])
    size = int(size if isinstance(size, int) else size[0])
    return {"size": size, "resize": size, "interpolation": pre["interpolation"],
            "mean": [float(v) for v in pre["mean"]], "std": [float(v) for v in pre["std"]], "channels": 3,
            "source": f"open_clip:{args['model_name']}" + (f".{tag}" if tag else "")}


def resolve_open_clip_block(block: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Check the model name and tag; record the weights file's SHA-256."""
    import open_clip

    args = block["args"]
    open_clip_model_config(args)
    tag = args.get("pretrained")
    if tag and not args.get("pretrained_file") and not open_clip.get_pretrained_cfg(args["model_name"], tag):
        raise ConfigError(f"arch.args.pretrained: open_clip has no tag {tag!r} for {args['model_name']} "
                          f"(valid: {', '.join(open_clip.list_pretrained_tags_by_model(args['model_name'])) or 'none'})")
    if args.get("pretrained_file"):
        sha = check_recorded_sha(args["pretrained_file"], args.get("pretrained_sha256"), "arch.args.pretrained_sha256")
        args = {**args, "pretrained_sha256": sha}
    return {**block, "args": args}


class TextTower:
    """The CLIP text encoder kept next to (not inside) the image model: class-name prompts -> text features in the
    image feature space (normalised), for classifier initialisation and zero-shot heads. Not a submodule: it is not
    trained or saved, and the head-initialising section drops it after use."""

    def __init__(self, clip: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], proj: torch.Tensor | None,
                 project: bool, logit_scale: float) -> None:
        self.clip, self.tokenizer, self.project, self.logit_scale = clip, tokenizer, project, logit_scale
        self.proj = None if proj is None else proj.detach().clone()

    @torch.no_grad()
    def embed(self, prompts: Sequence[str], device: torch.device, batch_size: int = 256) -> torch.Tensor:
        """Normalised text features (N, D_joint) of ``prompts`` in CLIP's joint embedding."""
        self.clip.to(device).eval()
        chunks = [self.clip.encode_text(self.tokenizer(list(prompts[i:i + batch_size])).to(device)).float()
                  for i in range(0, len(prompts), batch_size)]
        return F.normalize(torch.cat(chunks), dim=-1)

    def to_feature_space(self, text: torch.Tensor) -> torch.Tensor:
        """Joint-embedding vectors -> the image features' space: unchanged when the model projects (``project``),
        else through the transposed visual projection (LIFT's mapping onto the pooled width)."""
        if self.project or self.proj is None:
            return text
        return text @ self.proj.to(text.device).float().t()


def _open_clip_file(model_name: str, tag: str | None) -> str:
    """The file open_clip's own download would load for ``model_name``/``tag``."""
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(model_name, tag or "")
    if not cfg:
        raise OSError(f"open_clip has no pretrained tag {tag!r} for {model_name}")
    return download_pretrained(cfg)


@MODELS.register("open_clip")
def open_clip_model(num_classes: int, model_name: str, pretrained: str | None = None,
                    pretrained_file: str | None = None, pretrained_sha256: str | None = None,
                    model_config_file: str | None = None, num_experts: int = 1, use_norm: bool = True,
                    s: float = 30.0, expert_blocks: int = 0, project: bool = False,
                    load_weights: bool = True) -> MultiExpertModel:
    """The image tower of an open_clip model (CLIP, SigLIP ...) as the backbone of E experts; ``pretrained`` is
    open_clip's tag ("openai", "laion2b_s34b_b88k" ...), ``pretrained_file`` a file open_clip saved (its state dict).
    ``project``: features after the visual projection (the joint embedding; zero-shot) instead of the pooled width
    (LIFT). The text tower stays outside the model (``model.text_tower``) for classifier initialisation."""
    import open_clip

    open_clip_model_config({"model_name": model_name, "model_config_file": model_config_file})
    identity = None
    source = None
    if (pretrained or pretrained_file) and load_weights:
        source = pretrained_file
        if source is None:
            try:
                source = _open_clip_file(model_name, pretrained)
            except Exception as exc:
                cfg = open_clip.get_pretrained_cfg(model_name, pretrained or "") or {}
                where = f"https://huggingface.co/{cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url", "?")
                raise offline_error("open_clip", f"{model_name}/{pretrained}", f"Download its weights file from "
                                    f"{where} on a machine with internet (or run: python -c \"import open_clip; "
                                    f"open_clip.create_model('{model_name}', pretrained='{pretrained}')\" and copy "
                                    "the file from the cache) and copy it here.", str(exc).splitlines()[0]) from None
        sha = check_recorded_sha(source, pretrained_sha256, "arch.args.pretrained_sha256")
        identity = {"library": "open_clip", "model": model_name, "tag": pretrained, "file": str(source), "sha256": sha}
    try:
        clip = open_clip.create_model(model_name, pretrained=source, pretrained_text=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{source} does not fit open_clip model {model_name} (arch.args.pretrained_file): "
                              f"{str(exc).splitlines()[0]}") from None
    visual = clip.visual
    clip.visual = None  # the text tower stays outside the image model
    logit_scale = float(clip.logit_scale.detach().exp()) if hasattr(clip, "logit_scale") else 100.0
    tower = TextTower(clip, open_clip.get_tokenizer(model_name), getattr(visual, "proj", None), project, logit_scale)
    if not project and getattr(visual, "proj", None) is not None:
        visual.proj = None  # unused by the pooled-width features (the text tower keeps its copy for the mapping)
    model = wrap(visual, identity, num_classes, num_experts, use_norm, s, expert_blocks, project, "arch.args")
    model.__dict__["text_tower"] = tower  # plain attribute: never a submodule, never saved
    return model


open_clip_model.resolve_block = resolve_open_clip_block  # type: ignore[attr-defined]
open_clip_model.input_config = open_clip_input_config  # type: ignore[attr-defined]
