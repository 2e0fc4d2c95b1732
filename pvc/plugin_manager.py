"""The plugin manager: loads the ``pvc`` entry-point group and builds the registries.

Built-in and third-party plugins arrive the same way, so `pvc plugin list` shows both, with the distribution
each came from.
"""
import importlib
import threading
from typing import Any

import pluggy

from pvc import hookspecs
from pvc.errors import PluginError, NotFound


class Plugins:
    """The loaded plugins of one process and the name → implementation registry of each hook."""

    def __init__(self, manager: pluggy.PluginManager):
        self.manager = manager
        self._lock = threading.Lock()
        self._registries: dict[str, dict[str, Any]] = {}
        self._owners: dict[str, dict[str, str]] = {}

    def registry(self, hook_name: str) -> dict[str, Any]:
        """Name → implementation for one registration hook; built once, refusing duplicate names."""
        with self._lock:
            if hook_name not in self._registries:
                self._build(hook_name)
            return self._registries[hook_name]

    def _build(self, hook_name: str) -> None:
        kind = hookspecs.REGISTRATION_HOOKS[hook_name]
        registry: dict[str, Any] = {}
        owners: dict[str, str] = {}
        for implementation in getattr(self.manager.hook, hook_name).get_hookimpls():
            try:
                registered = implementation.function() or {}
            except Exception as error:
                raise PluginError(f"plugin '{implementation.plugin_name}' failed in {hook_name}: {error}") \
                    from error
            for name, value in registered.items():
                if name in registry:
                    raise PluginError(f"{kind} '{name}' is registered by two plugins: "
                                      f"'{owners[name]}' and '{implementation.plugin_name}'")
                registry[name] = value
                owners[name] = implementation.plugin_name
        self._registries[hook_name] = registry
        self._owners[hook_name] = owners

    def check(self) -> None:
        """Build every registry now, so that two plugins claiming one name stop a daemon at start."""
        for hook_name in hookspecs.REGISTRATION_HOOKS:
            self.registry(hook_name)

    def refresh(self) -> None:
        """Load plugins installed since this process started, so a new plugin is usable without a restart."""
        importlib.invalidate_caches()
        with self._lock:
            before = len(self.manager.get_plugins())
            _load_entry_points(self.manager)
            if len(self.manager.get_plugins()) != before:
                self._registries.clear()
                self._owners.clear()

    def get(self, hook_name: str, name: str) -> Any:
        """The implementation registered as `name`; an unknown name is looked for among newly installed
        plugins before it is refused."""
        registry = self.registry(hook_name)
        if name not in registry:
            self.refresh()
            registry = self.registry(hook_name)
        if name not in registry:
            kind = hookspecs.REGISTRATION_HOOKS[hook_name]
            known = ", ".join(sorted(registry)) or "none"
            raise NotFound(f"unknown {kind} '{name}' (known: {known})")
        return registry[name]

    def describe(self) -> list[dict[str, Any]]:
        """Every loaded plugin: its name, distribution, version, module, and the names it registers under one
        key per registration hook (`registered_key`), so that each row is a flat object."""
        self.refresh()
        distributions = {id(plugin): dist for plugin, dist in self.manager.list_plugin_distinfo()}
        rows = []
        for name, plugin in sorted(self.manager.list_name_plugin()):
            dist = distributions.get(id(plugin))
            row = {
                "name": name,
                "distribution": dist.project_name if dist else None,
                "version": dist.version if dist else None,
                "module": getattr(plugin, "__name__", type(plugin).__name__),
            }
            for hook_name in hookspecs.REGISTRATION_HOOKS:
                self.registry(hook_name)
                row[registered_key(hook_name)] = sorted(
                    registered for registered, owner in self._owners[hook_name].items() if owner == name)
            rows.append(row)
        return rows


def registered_key(hook_name: str) -> str:
    """The key under which `Plugins.describe` lists what a plugin registers through `hook_name`
    (``pvc_migration_selectors`` → ``migration_selectors``)."""
    return hook_name.removeprefix(f"{hookspecs.PROJECT}_")


def load(extra: list[Any] | None = None) -> Plugins:
    """Load every plugin published under the ``pvc`` entry-point group, plus `extra` objects (tests)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    _load_entry_points(manager)
    for plugin in extra or []:
        manager.register(plugin)
    return Plugins(manager)


def _load_entry_points(manager: pluggy.PluginManager) -> None:
    try:
        manager.load_setuptools_entrypoints(hookspecs.PROJECT)
    except Exception as error:
        raise PluginError(f"loading plugins failed: {error}") from error
