"""The manual's references, generated from the code so that they cannot drift from it.

Object types (each lands in the built manual's ``objects.inv`` as ``std:TYPE``, which the inventory test reads):

- ``pvc-command``: a click command (``pvc vm define``), from `pvc.cli.main.cli`;
- ``pvc-setting``: a key of a settings file (``pvcnoded.yaml:node_name``), from `pvc.config`;
- ``pvc-cluster-key``: a key of the cluster config (``keepalive_interval``), from `pvc.cluster_config.KEYS`;
- ``pvc-rule``: a safety rule settings take part in (``self-fence-deadline``), from `pvc.cluster_config.RULES`;
- ``pvc-state``: a daemon, domain or VM state (``daemon:dead``), written by hand in the troubleshooting guide,
  since what to do about a state is a person's advice (the inventory test names any state it lacks).

Generated content is built as docutils nodes, not as markup, so no help text can break the build.
"""
from __future__ import annotations

import importlib
import pkgutil
import re
from typing import Any, Iterator

import click
from docutils import nodes
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

SETTINGS_FILES = {
    "pvcapid.yaml": ("APID_SETTINGS", "the coordinator, pvcapid (sample: contrib/pvcapid.yaml; every key is also "
                                      "a command-line option, --KEY-NAME)"),
    "pvcnoded.yaml": ("NODED_SETTINGS", "the node daemon, pvcnoded (sample: contrib/pvcnoded.yaml; every key is "
                                        "also a command-line option, --KEY-NAME)"),
    "pvc.yaml": ("CLIENT_SETTINGS", "the client's settings (PVC_CONFIG, else ~/.config/pvc/pvc.yaml), read by "
                                    "pvc and pvc.connect()"),
    "connections.yaml": ("CONNECTION_SETTINGS", "one saved connection (pvc connection add) in "
                                                "PVC_CLIENT_DIR/connections.yaml"),
}
"""Each settings file and the list of `pvc.config` declaring its keys."""

OBJECT_TYPES = ("pvc-command", "pvc-setting", "pvc-cluster-key", "pvc-rule", "pvc-state")


def _register(directive: SphinxDirective, objtype: str, name: str) -> nodes.target:
    """A target for `name`, recorded in the standard domain so that roles and objects.inv find it."""
    anchor = make_id(directive.env, directive.state.document, objtype, name)
    directive.env.get_domain("std").note_object(objtype, name, anchor, location=directive.get_location())
    return nodes.target("", "", ids=[anchor])


def _reference(objtype: str, name: str) -> addnodes.pending_xref:
    """A cross-reference the build must resolve (the manual is built nitpicky)."""
    xref = addnodes.pending_xref("", refdomain="std", reftype=objtype, reftarget=name, refexplicit=False,
                                 refwarn=True)
    xref += nodes.literal(name, name)
    return xref


def _paragraph(*parts: nodes.Node | str) -> nodes.paragraph:
    paragraph = nodes.paragraph()
    for part in parts:
        paragraph += nodes.Text(part) if isinstance(part, str) else part
    return paragraph


def _default(value: Any) -> str:
    from pvc import config
    if value is config.REQUIRED:
        return "required"
    if value is None:
        return "null"
    return repr(value)


def _rules_paragraph(rules: tuple[str, ...]) -> nodes.paragraph:
    parts: list[nodes.Node | str] = ["Safety rule: "]
    for index, rule in enumerate(rules):
        parts += [", "] if index else []
        parts.append(_reference("pvc-rule", rule))
    return _paragraph(*parts)


class SettingsReference(SphinxDirective):
    """Every key of one settings file (the argument: ``pvcnoded.yaml``, ...), from its declarations."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from pvc import config
        file_name = self.arguments[0]
        attribute, about = SETTINGS_FILES[file_name]
        result: list[nodes.Node] = [_paragraph(f"{file_name}: {about}.")]
        items = nodes.definition_list()
        for setting in getattr(config, attribute):
            name = f"{file_name}:{setting.name}"
            term = nodes.term()
            term += _register(self, "pvc-setting", name)
            term += nodes.literal(setting.name, setting.name)
            definition = nodes.definition()
            definition += _paragraph(setting.description[0].upper() + setting.description[1:] + ".")
            definition += _paragraph(f"Type: {config._type_name(setting.type)}. Default: {_default(setting.default)}."
                                     f" Option: {setting.option}.")
            if setting.rules:
                definition += _rules_paragraph(setting.rules)
            items += nodes.definition_list_item("", term, definition)
        return [*result, items]


class ClusterConfigReference(SphinxDirective):
    """Every key of the cluster config, from `pvc.cluster_config.KEYS`."""

    def run(self) -> list[nodes.Node]:
        from pvc import cluster_config
        items = nodes.definition_list()
        for key in cluster_config.KEYS:
            term = nodes.term()
            term += _register(self, "pvc-cluster-key", key.name)
            term += nodes.literal(key.name, key.name)
            definition = nodes.definition()
            definition += _paragraph(key.description[0].upper() + key.description[1:] + ".")
            facts = [f"Default: {_default(key.default) if key.default is not None else 'absent'}."]
            if key.choices:
                facts.append(f"One of: {', '.join(key.choices)}.")
            if key.settable:
                facts.append(f"Set with: pvc cluster config {key.option}, or cluster.config({key.name}=...).")
            if key.fencing:
                facts.append("Seeded from the first coordinator's pvcapid.yaml; overridable per node "
                             f"(pvc cluster config --node NODE {key.option}).")
            definition += _paragraph(" ".join(facts))
            if key.rules:
                definition += _rules_paragraph(key.rules)
            items += nodes.definition_list_item("", term, definition)
        return [items]


class RulesReference(SphinxDirective):
    """Every safety rule settings take part in, with the settings and keys that do."""

    def run(self) -> list[nodes.Node]:
        from pvc import cluster_config, config, fencing_settings
        members: dict[str, list[tuple[str, str]]] = {rule: [] for rule in cluster_config.RULES}
        for file_name, (attribute, _about) in SETTINGS_FILES.items():
            for setting in getattr(config, attribute):
                for rule in setting.rules:
                    members[rule].append(("pvc-setting", f"{file_name}:{setting.name}"))
        for key in cluster_config.KEYS:
            for rule in key.rules:
                members[rule].append(("pvc-cluster-key", key.name))
        items = nodes.definition_list()
        for rule in cluster_config.RULES:
            text = fencing_settings.rule_text(rule)
            term = nodes.term()
            term += _register(self, "pvc-rule", rule)
            term += nodes.literal(rule, rule)
            definition = nodes.definition()
            definition += _paragraph(text)
            parts: list[nodes.Node | str] = ["Takes part: "]
            for index, (objtype, name) in enumerate(members[rule]):
                parts += [", "] if index else []
                parts.append(_reference(objtype, name))
            definition += _paragraph(*parts)
            items += nodes.definition_list_item("", term, definition)
        return [items]


def walk_commands(command: click.Command, path: tuple[str, ...] = ("pvc",)) -> Iterator[tuple[str, click.Command]]:
    """Every command under `command`, groups included, with its full name, in the order a reader expects."""
    yield " ".join(path), command
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            yield from walk_commands(command.commands[name], (*path, name))


def _help_nodes(text: str) -> list[nodes.Node]:
    """Click help as paragraphs; a ``\\b`` block (kept as written) as a literal block."""
    result: list[nodes.Node] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        if block.lstrip().startswith("\b"):
            literal = block.lstrip()[1:].strip("\n")
            result.append(nodes.literal_block(literal, literal))
        elif block.strip():
            result.append(_paragraph(" ".join(line.strip() for line in block.splitlines())))
    return result


def _parameter_nodes(context: click.Context, parameter: click.Parameter) -> nodes.definition_list_item:
    from pvc.cli import output
    term = nodes.term()
    spellings = ", ".join([*parameter.opts, *parameter.secondary_opts]) if isinstance(parameter, click.Option) \
        else parameter.human_readable_name
    metavar = parameter.make_metavar(context) if isinstance(parameter, click.Option) and not parameter.is_flag \
        else ""
    term += nodes.literal(spellings, spellings + (f" {metavar}" if metavar else ""))
    definition = nodes.definition()
    facts = [parameter.help] if isinstance(parameter, click.Option) and parameter.help else []
    if isinstance(parameter.type, click.Choice):
        upstream = [f"{name} (upstream's name for {ours})" for name, ours in output.UPSTREAM_FORMATS.items()
                    if name in parameter.type.choices]
        facts.append("One of: " + ", ".join(choice for choice in parameter.type.choices
                                              if choice not in output.UPSTREAM_FORMATS)
                     + (f"; also {', '.join(upstream)}" if upstream else "") + ".")
    upstream_spellings = getattr(parameter, "upstream", ())
    if upstream_spellings:
        facts.append(f"Upstream PVC's spelling: {', '.join(upstream_spellings)}.")
    if isinstance(parameter, click.Option) and parameter.envvar and isinstance(parameter.envvar, str):
        facts.append(f"Environment: {parameter.envvar}.")
    if isinstance(parameter, click.Argument):
        facts.append("Required argument." if parameter.required else "Optional argument.")
    definition += _paragraph(" ".join(_sentence(fact) for fact in facts) or "-")
    return nodes.definition_list_item("", term, definition)


def _sentence(text: str) -> str:
    """Click help starts lower-case and ends without a stop; the reference reads as sentences."""
    text = text.strip()
    text = text[0].upper() + text[1:] if text else text
    return text if text.endswith((".", "!", "?")) else text + "."


class CommandReference(SphinxDirective):
    """Every `pvc` command (or, with an argument, every ``pvc-local`` command) from the click objects."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        program = self.arguments[0] if self.arguments else "pvc"
        if program == "pvc":
            from pvc.cli.main import cli
        else:
            from pvc.cli.local import cli
        result: list[nodes.Node] = []
        for name, command in walk_commands(cli, (program,)):
            section = nodes.section(ids=[make_id(self.env, self.state.document, "", name)])
            section += nodes.title(name, name)
            section += _register(self, "pvc-command", name)
            context = click.Context(command, info_name=name)
            usage = " ".join([name, *command.collect_usage_pieces(context)])
            section += nodes.literal_block(usage, usage)
            section += _help_nodes(command.help or "")
            parameters = [parameter for parameter in command.params if not getattr(parameter, "hidden", False)]
            if parameters:
                items = nodes.definition_list()
                for parameter in parameters:
                    items += _parameter_nodes(context, parameter)
                section += items
            if isinstance(command, click.Group):
                parts: list[nodes.Node | str] = ["Commands: "]
                for index, sub in enumerate(sorted(command.commands)):
                    parts += [", "] if index else []
                    parts.append(_reference("pvc-command", f"{name} {sub}"))
                section += _paragraph(*parts)
            result.append(section)
        return result


def remote_areas() -> list[type]:
    """Every class of `pvc.rpc.areas` a coordinator exposes over Pyro5 (what `pvc.connect()` reaches)."""
    import pvc.rpc.areas
    found = []
    for module_info in pkgutil.iter_modules(pvc.rpc.areas.__path__):
        module = importlib.import_module(f"pvc.rpc.areas.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ and \
                    getattr(value, "_pyroExposed", False):
                found.append(value)
    return found


def remote_methods(area: type) -> list[str]:
    """The public methods of a remote area (its own and its mixins'), as a client calls them."""
    return sorted(name for name in dir(area) if not name.startswith("_") and callable(getattr(area, name)))


class RemoteAreasReference(SphinxDirective):
    """autodoc for every remote area class and every public method (mixins' included)."""

    def run(self) -> list[nodes.Node]:
        lines = []
        for area in remote_areas():
            lines += [f".. autoclass:: {area.__module__}.{area.__qualname__}", "   :members:",
                      "   :inherited-members: object", ""]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="pvc_docs"), self.content_offset, container)
        return container.children


class DeadlineExample(SphinxDirective):
    """A worked example of the fencing rules, computed by `pvc.fencing_settings` itself: the argument is
    ``KEEPALIVE_INTERVAL FENCE_INTERVALS SUICIDE_INTERVALS [SESSION_TIMEOUT]``."""

    required_arguments = 3
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from pvc import fencing_settings
        keepalive, fence, suicide = float(self.arguments[0]), int(self.arguments[1]), int(self.arguments[2])
        session = float(self.arguments[3]) if len(self.arguments) > 3 else None
        settings = fencing_settings.FencingSettings(keepalive, fence, suicide, "migrate")
        rows = [
            ("silence before the self-fence", f"suicide_intervals {suicide} × keepalive_interval {keepalive:g} s",
             settings.silence_before_self_fence_s),
            ("watchdog period", f"min(0.25 s, keepalive_interval / 10)", settings.watchdog_period_s),
            ("peer check", f"{fencing_settings.PEER_CHECK_INTERVALS:g} × keepalive_interval", settings.peer_check_s),
            ("stopping VMs through libvirt", f"{fencing_settings.LIBVIRT_STOP_INTERVALS:g} × keepalive_interval",
             settings.libvirt_stop_budget_s),
            ("killing what libvirt did not stop", f"{fencing_settings.KILL_INTERVALS:g} × keepalive_interval",
             settings.kill_budget_s),
            ("self-fence deadline", "the sum", settings.self_fence_deadline_s),
            ("leader's fence deadline", f"fence_intervals {fence} × keepalive_interval {keepalive:g} s",
             settings.fence_deadline_s),
        ]
        table = nodes.table()
        group = nodes.tgroup(cols=3)
        table += group
        for width in (30, 50, 12):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        body = nodes.tbody()
        group += body
        for target, cells in ((head, ("term", "how", "seconds")),
                              *((body, (label, how, f"{value:g}")) for label, how, value in rows)):
            row = nodes.row()
            for cell in cells:
                entry = nodes.entry()
                entry += _paragraph(cell)
                row += entry
            target += row
        problem = fencing_settings.violation(settings, session)
        verdict = f"Refused: {problem}." if problem else (
            f"Accepted: the node has stopped its VMs {settings.fence_deadline_s - settings.self_fence_deadline_s:g} s "
            "before the leader may start them elsewhere"
            + (f", and its silence outlasts kazoo's detection lag "
               f"({fencing_settings.KAZOO_DETECTION_FRACTION * session:.2f} s for a {session:g} s session)."
               if session is not None else "."))
        return [table, _paragraph(verdict)]


def setup(app) -> dict[str, Any]:
    for objtype in OBJECT_TYPES:
        app.add_object_type(objtype, objtype, indextemplate=f"pair: %s; {objtype[4:].replace('-', ' ')}")
    app.add_directive("pvc-settings-reference", SettingsReference)
    app.add_directive("pvc-cluster-config-reference", ClusterConfigReference)
    app.add_directive("pvc-rules-reference", RulesReference)
    app.add_directive("pvc-command-reference", CommandReference)
    app.add_directive("pvc-remote-areas-reference", RemoteAreasReference)
    app.add_directive("pvc-deadline-example", DeadlineExample)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
