"""Parameter-efficient fine-tuning of a backbone (docs/foundation_models.md), registered in ``PEFT`` and applied by
the ``arch.peft`` model extension: ``"peft": {"type": "adaptformer", "args": {"bottleneck": "auto"}}``.

The extension freezes the backbone (``trunk.`` and ``branch.``); the method then adds its modules (trainable) or
unfreezes a subset. Heads and other extensions stay trainable. Methods that add modules put them into the transformer
blocks of a foundation backbone (model/foundation.py): one set per block of the shared trunk and one per block of
every expert's own blocks, so per-expert adapters come from ``arch.args.expert_blocks``. ``layers``: "all" blocks,
only the per-expert ("experts") or only the shared ("shared") ones. Adapters and LoRA start as the identity (their
last projection is zero), so the pretrained model's output is unchanged before training.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Sequence

import torch
import torch.nn as nn

from longtail.model.experts import ModelExtension
from longtail.model.foundation import final_seq_len, token_blocks
from longtail.registry import MODEL_EXTENSIONS, PEFT
from longtail.utils.errors import ConfigError

LAYERS = ("all", "experts", "shared")


def backbone_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The backbone's parameters (trunk and branch; not the heads)."""
    return [(n, p) for n, p in model.named_parameters() if n.startswith(("trunk.", "branch."))]


def selected_blocks(model: nn.Module, layers: str, method: str) -> list[tuple[nn.Module, type, int | None]]:
    """The transformer blocks a method adapts (``layers``: all / experts / shared); none is an error."""
    if layers not in LAYERS:
        raise ConfigError(f"arch.peft.args.layers must be one of {', '.join(LAYERS)}, got {layers!r}")
    blocks = token_blocks(model)
    if not blocks:
        raise ConfigError(f"arch.peft.type {method!r} adds modules to transformer blocks: it needs a ViT backbone "
                          "(arch.type timm with a ViT, or open_clip); use full, linear, bitfit, layernorm or lora with "
                          "explicit targets for other backbones")
    chosen = [b for b in blocks if layers == "all" or (layers == "experts") == (b[2] is not None)]
    if not chosen:
        raise ConfigError(f"arch.peft.args.layers = {layers!r} selects no block (arch.args.expert_blocks decides "
                          "which blocks are per expert)")
    return chosen


def width_of(model: nn.Module) -> int:
    """Token width of a foundation ViT (the first block's LayerNorm size)."""
    block, family, _ = token_blocks(model)[0]
    return int(getattr(block, family.norm2).normalized_shape[-1])


def auto_bottleneck(num_classes: int, num_blocks: int) -> int:
    """LIFT's default adapter width: 2 ** max(0, floor(log2(C / (2 L)))) for C classes and L blocks."""
    return 2 ** max(0, int(math.log2(num_classes / (num_blocks * 2))))


class PeftSummary(ModelExtension):
    """Marks the applied method (``arch.peft``); keeps frozen BatchNorm layers of the backbone in eval mode so that
    a frozen backbone is a fixed function (its running statistics do not drift)."""

    def __init__(self, model: nn.Module, method: str) -> None:
        super().__init__()
        self.method = method
        self._model = weakref.ref(model)

    def train(self, mode: bool = True) -> "PeftSummary":
        super().train(mode)
        model = self._model()
        if mode and model is not None:
            for module in list(model.trunk.modules()) + list(model.branch.modules()):
                params = list(module.parameters(recurse=False))
                if "BatchNorm" in type(module).__name__ and params and not any(p.requires_grad for p in params):
                    module.eval()
        return self

    def extra_repr(self) -> str:
        return f"method={self.method}"


@MODEL_EXTENSIONS.register("peft")
def peft_extension(model: nn.Module, block: Any) -> PeftSummary:
    """Freeze the backbone, then apply the registered method of ``arch.peft`` (``{"type", "args"}`` or a name)."""
    if isinstance(block, str):
        block = {"type": block, "args": {}}
    if not isinstance(block, dict) or set(block) - {"type", "args"}:
        raise ConfigError(f"arch.peft must be {{\"type\": <method>, \"args\": {{...}}}}, got {block!r}")
    name = block.get("type")
    method = PEFT.get(name, where="arch.peft.type")
    args = dict(block.get("args") or {})
    PEFT.validate_args(name, args, "arch.peft.args", code_supplied={"model"})
    for _, param in backbone_parameters(model):
        param.requires_grad_(False)
    method(model=model, **args)
    return PeftSummary(model, name)


@PEFT.register("full")
def full_finetuning(model: nn.Module) -> None:
    """Every backbone parameter is trained."""
    for _, param in backbone_parameters(model):
        param.requires_grad_(True)


@PEFT.register("linear")
def linear_probe(model: nn.Module) -> None:
    """Only the heads are trained (the backbone is frozen: features can be cached, trainer.cache_features)."""


@PEFT.register("bitfit")
def bitfit(model: nn.Module) -> None:
    """BitFit (Ben Zaken et al. 2022): the backbone's bias terms are trained."""
    for name, param in backbone_parameters(model):
        if name.endswith("bias"):
            param.requires_grad_(True)


@PEFT.register("layernorm")
def layernorm_tuning(model: nn.Module) -> None:
    """LayerNorm tuning: the affine parameters of every LayerNorm of the backbone are trained."""
    for module in list(model.trunk.modules()) + list(model.branch.modules()):
        if isinstance(module, nn.LayerNorm):
            for param in module.parameters(recurse=False):
                param.requires_grad_(True)


@PEFT.register("lora")
def lora(model: nn.Module, r: int = 8, alpha: float | None = None, dropout: float = 0.0,
         targets: Sequence[str] | None = None, layers: str = "all") -> None:
    """LoRA (Hu et al. 2022) through HF peft: W x + (alpha / r) B A x on the ``targets`` modules of every selected
    block (default: the attention input projection, timm ``qkv`` / open_clip's MultiheadAttention), B = 0 at start.
    ``alpha`` defaults to 1 (scaling 1 / r, LIFT's choice). Other backbones: name ``targets`` (e.g. ["fc1", "fc2"])."""
    from peft import LoraConfig, inject_adapter_in_model

    if r < 1:
        raise ConfigError(f"arch.peft.args.r must be >= 1, got {r}")
    blocks = token_blocks(model)
    if blocks:
        chosen = selected_blocks(model, layers, "lora")
        modules = [(block, list(targets or family.attention_targets)) for block, family, _ in chosen]
    elif targets:
        modules = [(model.trunk, list(targets))]
    else:
        raise ConfigError("arch.peft lora on a backbone without transformer blocks needs arch.peft.args.targets "
                          "(names of its Linear / Conv modules, e.g. [\"fc1\", \"fc2\"])")
    config = LoraConfig(r=r, lora_alpha=float(alpha if alpha is not None else 1.0), lora_dropout=dropout,
                        target_modules=sorted({t for _, ts in modules for t in ts}))
    for module, _ in modules:
        try:
            inject_adapter_in_model(config, module)
        except ValueError as exc:
            raise ConfigError(f"arch.peft lora: {str(exc).splitlines()[0]} (arch.peft.args.targets)") from None
    for name, param in model.named_parameters():  # peft marks its own tensors; keep the rest of the backbone frozen
        if name.startswith(("trunk.", "branch.")):
            param.requires_grad_("lora_" in name)


class AdaptFormer(nn.Module):
    """AdaptFormer (Chen et al. 2022) as in LIFT: x_out = x + MLP(LN2(x)) + s * up(ReLU(down(LN(x)))), a parallel
    bottleneck with its own LayerNorm next to the block's MLP; ``up`` starts at zero, ``s`` learnable (init 1)."""

    def __init__(self, dim: int, bottleneck: int, scale: float | str = "learnable") -> None:
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.down = nn.Linear(dim, bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.kaiming_normal_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        if scale == "learnable":
            self.scale = nn.Parameter(torch.ones(1))
        else:
            self.register_buffer("scale", torch.tensor([float(scale)]))
        self._input: torch.Tensor | None = None

    def remember(self, module: nn.Module, args: tuple) -> None:
        """Forward pre-hook of the block's second norm: its input is the adapter's input."""
        self._input = args[0]

    def add(self, module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """Forward hook of the block's MLP: the adapter's output joins the MLP's."""
        x, self._input = self._input, None
        return out + self.up(torch.relu(self.down(self.ln(x)))) * self.scale


@PEFT.register("adaptformer")
def adaptformer(model: nn.Module, bottleneck: int | str = "auto", scale: float | str = "learnable",
                layers: str = "all") -> None:
    """AdaptFormer in every selected block (LIFT's method); ``bottleneck`` "auto" = LIFT's rule from the class
    count and depth (ImageNet-LT, 12 blocks: 32; CIFAR-100: 4), ``scale`` "learnable" or a fixed number."""
    chosen = selected_blocks(model, layers, "adaptformer")
    depth = len([b for b in token_blocks(model) if b[2] in (None, 0)])
    width = auto_bottleneck(model.num_classes, depth) if bottleneck == "auto" else bottleneck
    if not isinstance(width, int) or width < 1:
        raise ConfigError(f"arch.peft.args.bottleneck must be \"auto\" or an integer >= 1, got {bottleneck!r}")
    dim = width_of(model)
    for block, family, _ in chosen:
        adapter = AdaptFormer(dim, width, scale)
        block.add_module("adaptformer", adapter)
        getattr(block, family.norm2).register_forward_pre_hook(adapter.remember)
        getattr(block, family.mlp).register_forward_hook(adapter.add)


class Prompts(nn.Module):
    """Visual prompt tokens (VPT, Jia et al. 2022) of one block: appended after the first ``seq_len`` tokens of the
    block's input, replacing the previous block's prompts (deep) or added once (shallow)."""

    def __init__(self, tokens: int, dim: int, seq_len: int, patch_area: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        bound = math.sqrt(6.0 / float(3 * patch_area + dim))
        self.prompt = nn.Parameter(torch.empty(tokens, dim).uniform_(-bound, bound))

    def insert(self, module: nn.Module, args: tuple) -> tuple:
        """Forward pre-hook of the block."""
        x = args[0]
        prompt = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return (torch.cat([x[:, :self.seq_len], prompt], dim=1),) + tuple(args[1:])


def patch_area(model: nn.Module) -> int:
    """Pixels per patch of the ViT (VPT's initialisation range)."""
    backbone = model.trunk.backbone
    conv = backbone.patch_embed.proj if hasattr(backbone, "patch_embed") else backbone.conv1
    return int(conv.kernel_size[0] * conv.kernel_size[1])


def add_prompts(model: nn.Module, blocks: Sequence[tuple[nn.Module, type, int | None]], tokens: int) -> None:
    """A Prompts module (registered as ``block.vpt``) and its pre-hook on each block."""
    if tokens < 1:
        raise ConfigError(f"arch.peft.args.tokens must be >= 1, got {tokens}")
    dim, seq_len, area = width_of(model), final_seq_len(model), patch_area(model)
    for block, _, _ in blocks:
        prompts = Prompts(tokens, dim, seq_len, area)
        block.add_module("vpt", prompts)
        block.register_forward_pre_hook(prompts.insert)


@PEFT.register("vpt_shallow")
def vpt_shallow(model: nn.Module, tokens: int = 10) -> None:
    """VPT-shallow: ``tokens`` learned prompt tokens enter the first block and travel through all of them (each
    expert gets its own when the trunk has no block)."""
    blocks = selected_blocks(model, "all", "vpt_shallow")
    shared = [b for b in blocks if b[2] is None]
    first = shared[:1] if shared else [next(b for b in blocks if b[2] == e) for e in sorted({b[2] for b in blocks})]
    add_prompts(model, first, tokens)


@PEFT.register("vpt_deep")
def vpt_deep(model: nn.Module, tokens: int = 10, layers: str = "all") -> None:
    """VPT-deep: new learned prompt tokens at the input of every selected block."""
    add_prompts(model, selected_blocks(model, layers, "vpt_deep"), tokens)


class ScaleShift(nn.Module):
    """SSF (Lian et al. 2022): y = x * gamma + beta on the output of one operation (per output channel)."""

    def __init__(self, dim: int, init_std: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(1.0 + init_std * torch.randn(dim))
        self.shift = nn.Parameter(init_std * torch.randn(dim))

    def apply_to(self, module: nn.Module, args: tuple, out: Any) -> Any:
        """Forward hook: scale and shift the output (the first element of a MultiheadAttention's tuple)."""
        if isinstance(out, tuple):
            return (out[0] * self.scale + self.shift,) + tuple(out[1:])
        return out * self.scale + self.shift


def ssf_dim(module: nn.Module) -> int | None:
    """Output channels of an operation SSF follows (Linear, LayerNorm, MultiheadAttention), else None."""
    if isinstance(module, nn.MultiheadAttention):
        return int(module.embed_dim)
    if isinstance(module, nn.LayerNorm):
        return int(module.normalized_shape[-1])
    if isinstance(module, nn.Linear):
        return int(module.out_features)
    return None


@PEFT.register("ssf")
def ssf(model: nn.Module, init_std: float = 0.02, layers: str = "all") -> None:
    """SSF after every Linear, LayerNorm and attention of the selected blocks (scale ~ N(1, init_std), shift ~
    N(0, init_std) as in the paper; ``init_std`` 0 starts at the identity). Linear layers inside a
    MultiheadAttention are covered by the hook on the attention's output."""
    for block, _, _ in selected_blocks(model, layers, "ssf"):
        inside_mha = {id(m) for mha in block.modules() if isinstance(mha, nn.MultiheadAttention) for m in mha.modules()
                      if m is not mha}
        targets = [(name, m) for name, m in block.named_modules() if ssf_dim(m) and id(m) not in inside_mha]
        layers_ssf = nn.ModuleDict()
        for name, module in targets:
            shift = ScaleShift(ssf_dim(module), init_std)  # type: ignore[arg-type]
            layers_ssf[name.replace(".", "_")] = shift
            module.register_forward_hook(shift.apply_to)
        block.add_module("ssf", layers_ssf)
