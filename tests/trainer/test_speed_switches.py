"""Every speed switch against the plain path on one training step from identical weights and data.

channels_last, batched experts and torch.compile must give the same loss and gradients. The comparison runs in
float64: in float32 a tiny ReLU network's gradients differ by up to ~1e-2 between ANY two kernel orders (a few
activations near zero flip), which would hide real layout/grouping bugs behind a loose tolerance. bf16 autocast is
compared in float32 and only approximately (it is off by default for that reason).
"""
import pytest
import torch

from conftest import tiny_config
from longtail.trainer.trainer import Trainer
from longtail.core.build import resolve

pytestmark = pytest.mark.filterwarnings("ignore:.*differs from the official release")


def one_step(cifar10_dir, tmp_path, dtype=torch.float64, **overrides):
    """Loss and parameter gradients of the first training step of the tiny config (same seed -> same init/data)."""
    config = resolve(tiny_config(cifar10_dir, tmp_path, epochs=1, **overrides))
    trainer = Trainer(config, torch.device("cpu"), None, None, limit_batches=1, quiet=True)
    trainer.model.to(dtype)
    trainer.criterion.to(dtype)
    loader = trainer.data.train_loader
    float_batches = loader.batches
    loader.batches = lambda epoch, start=0: ((x.to(dtype), y) for x, y in float_batches(epoch, start))
    losses = []
    original_step = trainer.optimizer.step

    def capture(*args, **kwargs):  # grab gradients right before the update
        losses.append({n: p.grad.detach().float().clone() for n, p in trainer.model.named_parameters()})
        return original_step(*args, **kwargs)

    trainer.optimizer.step = capture
    metrics = trainer.train_epoch(1)
    return metrics["loss"], losses[0]


@pytest.fixture(scope="module")
def plain(cifar10_dir, tmp_path_factory):
    return one_step(cifar10_dir, tmp_path_factory.mktemp("p"), **{"trainer.channels_last": False})


@pytest.mark.parametrize("overrides", [
    {"trainer.channels_last": True},
    {"arch.args.batched_experts": True},
    {"arch.args.batched_experts": True, "trainer.channels_last": True},
    # aot_eager traces with dynamo + AOTAutograd like inductor but skips code generation (seconds, not minutes)
    pytest.param({"trainer.compile": "aot_eager"}, marks=pytest.mark.slow),
    # inductor code generation (C++ on CPU) of forward, loss and backward
    pytest.param({"trainer.compile": "default"}, marks=pytest.mark.slow),
], ids=["channels_last", "batched_experts", "batched+channels_last", "compile", "compile_inductor"])
def test_switch_matches_plain_step(cifar10_dir, tmp_path, plain, overrides):
    loss, grads = one_step(cifar10_dir, tmp_path, **{"trainer.channels_last": False, **overrides})
    plain_loss, plain_grads = plain
    assert loss == pytest.approx(plain_loss, rel=1e-10)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        assert torch.allclose(grads[name], plain_grads[name], atol=1e-10, rtol=1e-8), name


def test_bf16_autocast_is_close_to_fp32(cifar10_dir, tmp_path):
    plain_loss, plain_grads = one_step(cifar10_dir, tmp_path, torch.float32, **{"trainer.channels_last": False})
    loss, grads = one_step(cifar10_dir, tmp_path, torch.float32, **{"trainer.channels_last": False, "trainer.amp": "bf16"})
    assert loss == pytest.approx(plain_loss, rel=3e-2)
    flat = torch.cat([g.flatten() for g in grads.values()])
    ref = torch.cat([g.flatten() for g in plain_grads.values()])
    assert torch.nn.functional.cosine_similarity(flat, ref, dim=0) > 0.98


def test_compile_settings_and_full_batches(cifar10_dir, tmp_path):
    """trainer.compile: modes go to inductor, other strings are backends; compiling trains on full batches only."""
    from longtail.trainer.trainer import compile_options

    assert compile_options(False) is None
    assert compile_options(True) == {"backend": "inductor", "mode": "default"}
    assert compile_options("reduce-overhead") == {"backend": "inductor", "mode": "reduce-overhead"}
    assert compile_options("aot_eager") == {"backend": "aot_eager"}
    eager = Trainer(resolve(tiny_config(cifar10_dir, tmp_path, epochs=1)), torch.device("cpu"), None, None, quiet=True)
    compiled = Trainer(resolve(tiny_config(cifar10_dir, tmp_path, epochs=1, **{"trainer.compile": "aot_eager"})),
                       torch.device("cpu"), None, None, quiet=True)
    n, batch = len(compiled.data.train_set), compiled.data.train_loader.batch_size
    assert n % batch, "the tiny training set must end with a partial batch for this check"
    assert len(eager.data.train_loader) == -(-n // batch) and len(compiled.data.train_loader) == n // batch
    assert all(len(target) == batch for _, target in compiled.data.train_loader.batches(1))


def test_amp_auto_is_bf16_on_gpus_and_fp32_on_cpus(cifar10_dir, tmp_path):
    from longtail.utils.device import resolve_amp

    assert resolve_amp("auto", torch.device("cpu")) == "off" and resolve_amp("fp16", torch.device("cpu")) == "fp16"
    trainer = Trainer(resolve(tiny_config(cifar10_dir, tmp_path, epochs=1, **{"trainer.amp": "auto"})),
                      torch.device("cpu"), None, None, quiet=True)
    assert trainer.amp == "off" and trainer.scaler is None
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        assert resolve_amp("auto", torch.device("cuda")) == "bf16"


COMPILED_GRAPHS: list[torch.fx.GraphModule] = []


@torch._dynamo.register_backend(name="lt_test_recording_eager")
def recording_eager(graph: torch.fx.GraphModule, example_inputs: list) -> object:
    """A torch.compile backend that records every graph dynamo hands it and runs it eagerly."""
    COMPILED_GRAPHS.append(graph)
    return graph.forward


def to_float64(trainer: Trainer) -> None:
    """Model, loss, optimizer state and batches in float64."""
    trainer.model.to(torch.float64)
    trainer.criterion.to(torch.float64)
    for state in trainer.optimizer.state.values():
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and value.dim() > 0:
                state[key] = value.double()
    for loader in (trainer.data.train_loader, trainer.data.test_loader):
        loader.batches = (lambda batches: lambda epoch, start=0: ((x.double(), y) for x, y in batches(epoch, start)))(
            loader.batches)


def fit_three_epochs(cifar10_dir, tmp_path, compile_setting, resume=None):
    """Trainer over 3 epochs whose LR drops 10x each epoch; returns it and the number of graphs compiled per epoch."""
    config = resolve(tiny_config(cifar10_dir, tmp_path, epochs=3, **{
        "trainer.compile": compile_setting, "lr_scheduler.args": {"step1": 1, "step2": 2, "gamma": 0.1, "warmup_epoch": 0}}))
    (tmp_path / "run").mkdir(parents=True)
    trainer = Trainer(config, torch.device("cpu"), tmp_path / "run", resume, limit_batches=2, quiet=True)
    to_float64(trainer)  # float32 results depend on kernel order (and so on the thread count): compare in float64
    graphs_after_epoch: dict[int, int] = {}
    trainer.callbacks.append(lambda tr, epoch, step: graphs_after_epoch.__setitem__(epoch, len(COMPILED_GRAPHS)))
    trainer.fit()
    return trainer, graphs_after_epoch


def test_compiled_update_follows_the_schedule_without_recompiling(cifar10_dir, tmp_path):
    """Under trainer.compile the optimizer update is compiled too, and an LR change does not recompile it (the LR is
    a tensor input, not a constant baked into the graph); weights match eager training."""
    eager, _ = fit_three_epochs(cifar10_dir, tmp_path / "eager", False)
    COMPILED_GRAPHS.clear()
    compiled, graphs_after_epoch = fit_three_epochs(cifar10_dir, tmp_path / "compiled", "lt_test_recording_eager")
    update_graphs = [g for g in COMPILED_GRAPHS if any("fma" in str(n.target) or "_foreach" in str(n.target) for n in g.graph.nodes)]
    assert update_graphs, "the optimizer update was not compiled"
    assert graphs_after_epoch[1] > 0 and graphs_after_epoch[2] == graphs_after_epoch[1] == graphs_after_epoch[3]
    assert [h["lr"] for h in compiled.history] == pytest.approx([0.05, 0.005, 0.0005], rel=1e-12)
    assert [h["lr"] for h in compiled.history] == [h["lr"] for h in eager.history]
    # float64: only fma rounding separates the runs; an update at the wrong LR moves the weights by ~1e-2
    assert [h["loss"] for h in compiled.history] == pytest.approx([h["loss"] for h in eager.history], rel=1e-9)
    for (name, p), q in zip(compiled.model.named_parameters(), eager.model.parameters()):
        assert torch.allclose(p, q, atol=1e-9, rtol=1e-9), name


def test_checkpoint_of_a_compiled_run_resumes_eagerly(cifar10_dir, tmp_path):
    """The compiled run holds the LR as a tensor; its checkpoint resumes in an eager run with a float LR."""
    compiled, _ = fit_three_epochs(cifar10_dir, tmp_path / "compiled", "aot_eager")
    assert all(isinstance(g["lr"], torch.Tensor) for g in compiled.optimizer.param_groups)
    state = torch.load(tmp_path / "compiled" / "run" / "checkpoint-epoch2.pth", weights_only=True)
    resumed, _ = fit_three_epochs(cifar10_dir, tmp_path / "resumed", False, resume=state)
    assert [type(g["lr"]) for g in resumed.optimizer.param_groups] == [float]
    assert resumed.history[-1]["lr"] == pytest.approx(0.0005, rel=1e-12) and len(resumed.history) == 3
