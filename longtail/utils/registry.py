"""Name -> constructor registries with config validation (one registry per kind of object).

Plugin packages (``Registry.add_plugin_package``, e.g. the project's ``methods`` package or a user's module named in
a config's ``imports``) are imported on the first look-up of any registry, so whatever they register is found
without the caller importing them.
"""
from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import typing
from typing import Any, Callable, ClassVar, Iterable

from longtail.utils.errors import ConfigError


def _close_matches(name: str, valid: Iterable[str]) -> str:
    """Return a ' Did you mean ...?' hint for a misspelt name (empty when nothing is close)."""
    hits = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""


def _type_name(hint: Any) -> str:
    """Readable name of a type hint for error messages."""
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def value_matches(value: Any, hint: Any) -> bool:
    """True when a JSON-like config value fits a (simple) type hint; unknown hints accept anything."""
    if hint is inspect.Parameter.empty or hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(value_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(hint)
        if not args or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            args = args[:1]
        return len(args) != 1 or all(value_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


class Registry:
    """Maps names to constructors; builds objects from ``{"type": name, "args": {...}}`` config blocks."""

    _plugin_packages: ClassVar[list[str]] = []
    _plugins_loaded: ClassVar[set[str]] = set()

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}

    @classmethod
    def add_plugin_package(cls, module: str) -> None:
        """Import ``module`` (a package of plugins that register themselves) before the next look-up."""
        if module not in cls._plugin_packages:
            cls._plugin_packages.append(module)

    @classmethod
    def load_plugins(cls) -> None:
        """Import every plugin package not imported yet (a missing user module is a ConfigError)."""
        for module in list(cls._plugin_packages):
            if module in cls._plugins_loaded:
                continue
            cls._plugins_loaded.add(module)  # before importing: a plugin may look things up while it registers
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module.split(".")[0] and exc.name != module:
                    raise
                cls._plugins_loaded.discard(module)
                cls._plugin_packages.remove(module)
                raise ConfigError(f"plugin module {module!r} (config 'imports') cannot be imported: {exc}; "
                                  "put its folder on PYTHONPATH or fix the name") from None

    def register(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering a class or function under ``name`` (default: its ``__name__``)."""

        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = name or fn.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = fn
            return fn

        return decorator

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self.load_plugins()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, Callable[..., Any]]]:
        """(name, entry) pairs in registration order."""
        self.load_plugins()
        return list(self._entries.items())

    def __contains__(self, name: str) -> bool:
        self.load_plugins()
        return name in self._entries

    def get(self, name: str, where: str = "type") -> Callable[..., Any]:
        """Look a name up; unknown names raise ConfigError listing every valid name."""
        self.load_plugins()
        if not isinstance(name, str):
            raise ConfigError(f"'{where}' must be a name (one of: {', '.join(self.names())}), got {name!r}")
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r} at '{where}'.{_close_matches(name, self._entries)} "
                f"Valid {self.kind} names: {', '.join(self.names())}"
            )
        return self._entries[name]

    def signature(self, name: str) -> dict[str, inspect.Parameter]:
        """Constructor parameters of an entry (for a class: of its ``__init__``)."""
        fn = self._entries[name]
        target = fn.__init__ if inspect.isclass(fn) else fn
        return dict(inspect.signature(target).parameters)

    def type_hints(self, name: str) -> dict[str, Any]:
        """Resolved type hints of an entry's constructor parameters."""
        fn = self._entries[name]
        target = fn.__init__ if inspect.isclass(fn) else fn
        try:
            return typing.get_type_hints(target)
        except Exception:  # unresolvable forward references: skip type checks
            return {}

    def validate_args(self, name: str, args: dict[str, Any], where: str, code_supplied: Iterable[str] = (),
                      check_missing: bool = True) -> None:
        """Check config args against the constructor: unknown keys, wrong types, missing required keys."""
        params = self.signature(name)
        params.pop("self", None)
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        code_supplied = set(code_supplied)
        valid = [k for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        hints = self.type_hints(name)
        for key, value in args.items():
            if key not in params and not accepts_kwargs:
                configurable = [k for k in valid if k not in code_supplied]
                raise ConfigError(
                    f"unknown key '{where}.{key}' for {self.kind} {name!r}.{_close_matches(key, configurable)} "
                    f"Valid keys: {', '.join(configurable) or '(none)'}"
                )
            hint = hints.get(key, params[key].annotation if key in params else inspect.Parameter.empty)
            if not value_matches(value, hint):
                raise ConfigError(
                    f"'{where}.{key}' must be of type {_type_name(hint)}, got {value!r} "
                    f"({type(value).__name__}); fix the value in the config or with --set {where}.{key}=..."
                )
        missing = [] if not check_missing else [
            k for k, p in params.items()
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
            and k not in args and k not in code_supplied
        ]
        if missing:
            raise ConfigError(f"missing required key(s) {', '.join(f'{where}.{k}' for k in missing)} for {self.kind} {name!r}")

    def own_siblings(self, name: str) -> tuple[str, ...]:
        """Keys an entry reads from its own block besides type/args (its ``config_siblings``, e.g. a loss's
        ``tau_min``); the engine then accepts them in that block and nowhere else."""
        return tuple(getattr(self._entries[name], "config_siblings", ()))

    def resolve_block(self, block: dict[str, Any] | str, where: str, config: dict[str, Any],
                      siblings: Iterable[str] = ()) -> dict[str, Any]:
        """Normalise a block to ``{"type", "args", ...}``, let its entry resolve derived values once (its
        ``resolve_block(block, config) -> block``, e.g. a loss turning tau_list 'limits' into numbers) and check
        the keys and value types (required keys are checked when the object is built: the code supplies some).
        Returns the block as written unless its entry resolved something."""
        normalised = self._normalise(block, where, siblings)
        resolver = getattr(self._entries[normalised["type"]], "resolve_block", None)
        if resolver is not None:
            block = normalised = resolver(normalised, config)
        self.validate_args(normalised["type"], normalised["args"], f"{where}.args", check_missing=False)
        return block

    def _normalise(self, block: dict[str, Any] | str, where: str, siblings: Iterable[str]) -> dict[str, Any]:
        """``{"type", "args", <siblings>}`` with a registered type and no other key (a bare name is a block)."""
        if isinstance(block, str):
            block = {"type": block, "args": {}}
        if not isinstance(block, dict) or "type" not in block:
            raise ConfigError(f"'{where}' must be an object with a \"type\" key (one of: {', '.join(self.names())})")
        self.get(block["type"], where=f"{where}.type")
        if not isinstance(block.get("args") or {}, dict):
            raise ConfigError(f"'{where}.args' must be an object, got {block['args']!r}")
        allowed = ("type", "args", *siblings, *self.own_siblings(block["type"]))
        extra = sorted(set(block) - set(allowed))
        if extra:
            raise ConfigError(f"unknown key(s) {', '.join(f'{where}.{k}' for k in extra)}; '{where}' accepts: "
                              f"{', '.join(allowed)}")
        return {**block, "args": dict(block.get("args") or {})}

    def build(self, block: dict[str, Any] | str, where: str, siblings: Iterable[str] = (), **code_kwargs: Any) -> Any:
        """Instantiate from a ``{"type", "args"}`` block (or a bare name); code kwargs fill what the config may not set.

        Code-supplied kwargs the constructor does not accept are dropped, so every entry only declares what it uses;
        a config key that collides with a code-supplied value must agree with it. ``siblings`` lists the extra keys
        the caller reads from the block itself (the entry adds its own ``config_siblings``); any other key is an error.
        """
        block = self._normalise(block, where, siblings)
        name, fn, args = block["type"], self._entries[block["type"]], block["args"]
        params = self.signature(name)
        accepts_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        supplied = {k: v for k, v in code_kwargs.items() if k in params or accepts_kwargs}
        self.validate_args(name, args, f"{where}.args", code_supplied=supplied)
        for key, value in supplied.items():
            if key in args and args[key] != value:
                raise ConfigError(
                    f"'{where}.args.{key}' is {args[key]!r} but the data/code says {value!r}; remove the key from the config"
                )
        return fn(**{**args, **supplied})
