"""``weighted``: an llm-d scheduling profile (filters, weighted scorers, a picker).

llm-d's endpoint picker runs each scheduling profile as: filters narrow the
candidates, each scorer gives every candidate a score in [0, 1], scores are
summed with the scorers' weights, and a picker picks
(``llm-d/llm-d-router`` ``pkg/epp/scheduling/scheduler_profile.go``, commit
ebab687). Its default profile is ``queue-scorer`` 2, ``kv-cache-utilization-scorer``
2, ``prefix-cache-scorer`` 3 with ``max-score-picker``
(``pkg/epp/config/loader/defaults.go``; the 3:2:2 of GIE PR #1827), which is this
strategy's default.

Configure it either inline in a scenario::

    { name = "weighted", weights = { "prefix-cache-scorer" = 3, "queue-scorer" = 2 },
      picker = "weighted-random-picker" }

or by pointing ``config`` at an llm-d ``EndpointPickerConfig`` YAML file (read
with a safe loader). The plugins the lab implements load with their own
parameters (``routing.strategies.llmd_plugins``); any other plugin, an unknown
parameter or a section the lab does not model is an error naming it and what is
supported.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from routing.base import register
from routing.strategies import llmd_plugins as lp
from routing.strategies.checked import CheckedStrategy
from routing.strategies.picking import at_least
from routing.types import BackendSnapshot, RequestInfo

#: llm-d's default profile weights (``loadDefaultConfig``).
DEFAULT_WEIGHTS = {"queue-scorer": 2.0, "kv-cache-utilization-scorer": 2.0, "prefix-cache-scorer": 3.0}
#: llm-d's weight for a scorer listed in a profile without one (``DefaultScorerWeight``).
DEFAULT_SCORER_WEIGHT = 1.0
#: Top-level sections of an ``EndpointPickerConfig`` the lab reads or may ignore.
READ_SECTIONS = ("apiVersion", "kind", "plugins", "schedulingProfiles")
IGNORED_SECTIONS = ("featureGates", "dataLayer")


class ConfigError(ValueError):
    """An ``EndpointPickerConfig`` the lab cannot run, saying why and what it can."""


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Parse an ``EndpointPickerConfig`` YAML file with a safe loader (no code runs)."""
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is an install requirement
        raise ConfigError("reading an llm-d config needs PyYAML: pip install PyYAML") from None
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read llm-d config {str(p)!r}: {exc.strerror or exc}") from None
    if len(text) > 1_000_000:
        raise ConfigError(f"llm-d config {str(p)!r} is over 1 MB; is it the right file?")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"llm-d config {str(p)!r} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"llm-d config {str(p)!r}: expected a mapping (an EndpointPickerConfig)")
    return doc


class Profile:
    """One scheduling profile, built: filters, (scorer, weight) pairs and a picker."""

    def __init__(self, name: str, filters, scorers, picker, producers) -> None:
        self.name = name
        self.filters: list[lp.Filter] = filters
        self.scorers: list[tuple[lp.Scorer, float]] = scorers
        self.picker: lp.Picker = picker
        self.producers: dict[str, lp.Plugin] = producers

    @property
    def plugins(self) -> list[lp.Plugin]:
        return [*self.filters, *(s for s, _ in self.scorers), self.picker]


def build_profile(doc: dict[str, Any], profile: str = "") -> Profile:
    """Build the chosen scheduling profile of an ``EndpointPickerConfig`` mapping."""
    for key in doc:
        if key in READ_SECTIONS or key in IGNORED_SECTIONS:
            continue
        raise ConfigError(
            f"section {key!r} of the llm-d config is not modelled in the lab (it configures "
            f"admission or transport, not the routing decision); remove it. The lab reads "
            f"{', '.join(READ_SECTIONS)} and ignores {', '.join(IGNORED_SECTIONS)}")
    kind = doc.get("kind", "EndpointPickerConfig")
    if kind != "EndpointPickerConfig":
        raise ConfigError(f"kind must be 'EndpointPickerConfig'; got {kind!r}")
    specs = doc.get("plugins") or []
    if not isinstance(specs, list):
        raise ConfigError("plugins must be a list of {type, name?, parameters?}")
    instances: dict[str, lp.Plugin] = {}
    producers: dict[str, lp.Plugin] = {}
    # Producers first, so scorers naming one find it wherever it is listed.
    ordered = sorted(enumerate(specs), key=lambda e: not _is_producer(e[1]))
    for i, spec in ordered:
        if not isinstance(spec, dict) or "type" not in spec:
            raise ConfigError(f"plugins[{i}] must be a mapping with a 'type'; got {spec!r}")
        extra = set(spec) - {"type", "name", "parameters"}
        if extra:
            raise ConfigError(f"plugins[{i}] has unknown key(s) {', '.join(sorted(extra))}; "
                              f"allowed: type, name, parameters")
        ptype = spec["type"]
        cls = lp.PLUGINS.get(ptype)
        if cls is None:
            raise ConfigError(
                f"plugin type {ptype!r} (plugins[{i}]) is not implemented in the lab; supported: "
                f"{', '.join(lp.supported())}")
        name = spec.get("name") or ptype
        if name in instances:
            raise ConfigError(f"plugin name {name!r} is used twice; names must be unique")
        try:
            plugin = cls(name, spec.get("parameters"), producers)
        except lp.PluginError as exc:
            raise ConfigError(f"plugins[{i}] ({name}): {exc}") from None
        instances[name] = plugin
        if plugin.KIND == "producer":
            producers[name] = plugin
    profiles = doc.get("schedulingProfiles")
    if not profiles:
        # llm-d: one "default" profile with every filter, scorer and picker, weight 1.
        profiles = [{"name": "default", "plugins": [
            {"pluginRef": n} for n, p in instances.items() if p.KIND in ("filter", "scorer", "picker")]}]
    if not isinstance(profiles, list):
        raise ConfigError("schedulingProfiles must be a list of {name, plugins}")
    names = [str(p.get("name", "")) if isinstance(p, dict) else "" for p in profiles]
    if profile:
        if profile not in names:
            raise ConfigError(f"no scheduling profile {profile!r}; the config has {', '.join(names)}")
        chosen = profiles[names.index(profile)]
    elif len(profiles) == 1:
        chosen = profiles[0]
    else:
        raise ConfigError(
            f"the config has {len(profiles)} scheduling profiles ({', '.join(names)}); the lab runs "
            f"one per strategy: set profile = \"...\" (profile handlers for P/D are not modelled)")
    if not isinstance(chosen, dict) or not isinstance(chosen.get("plugins", []), list):
        raise ConfigError("a scheduling profile must be {name, plugins: [{pluginRef, weight?}]}")
    filters, scorers, pickers = [], [], []
    for j, ref in enumerate(chosen.get("plugins", [])):
        if not isinstance(ref, dict) or "pluginRef" not in ref:
            raise ConfigError(f"profile {chosen.get('name')!r} plugins[{j}] needs a pluginRef")
        extra = set(ref) - {"pluginRef", "weight"}
        if extra:
            raise ConfigError(f"profile {chosen.get('name')!r} plugins[{j}] has unknown key(s) "
                              f"{', '.join(sorted(extra))}; allowed: pluginRef, weight")
        plugin = instances.get(ref["pluginRef"])
        if plugin is None:
            raise ConfigError(f"profile {chosen.get('name')!r} refers to plugin {ref['pluginRef']!r}, "
                              f"which is not in plugins; defined: {', '.join(instances) or '(none)'}")
        if plugin.KIND == "scorer":
            w = ref.get("weight", DEFAULT_SCORER_WEIGHT)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
                raise ConfigError(f"weight of {plugin.name!r} must be a number >= 0; got {w!r}")
            scorers.append((plugin, float(w)))
        elif plugin.KIND == "filter":
            filters.append(plugin)
        elif plugin.KIND == "picker":
            pickers.append(plugin)
        # producers and handlers in a profile are harmless references
    if len(pickers) > 1:
        raise ConfigError(f"profile {chosen.get('name')!r} has {len(pickers)} pickers; it needs one")
    if pickers:
        picker = pickers[0]
    else:
        # llm-d reuses any configured picker, else adds a max-score picker.
        configured = [p for p in instances.values() if p.KIND == "picker"]
        picker = configured[0] if configured else lp.MaxScorePicker("max-score-picker", {}, {})
    if not scorers:
        raise ConfigError(f"profile {chosen.get('name')!r} has no scorer; supported scorers: "
                          f"{', '.join(lp.supported('scorer'))}")
    return Profile(str(chosen.get("name", "default")), filters, scorers, picker, producers)


def _is_producer(spec: Any) -> bool:
    cls = lp.PLUGINS.get(spec.get("type")) if isinstance(spec, dict) else None
    return cls is not None and cls.KIND == "producer"


def inline_config(weights: dict[str, Any], picker: str, plugin_parameters: dict[str, Any],
                  filters: Sequence[str]) -> dict[str, Any]:
    """The ``EndpointPickerConfig`` an inline ``weights``/``picker`` table stands for."""
    if not isinstance(weights, dict) or not weights:
        raise ConfigError(f"weights must be a table of scorer type = weight; got {weights!r}; "
                          f"scorers: {', '.join(lp.supported('scorer'))}")
    if not isinstance(plugin_parameters, dict):
        raise ConfigError("plugin_parameters must be a table of plugin type = {parameters}")
    if isinstance(filters, str) or not isinstance(filters, (list, tuple)):
        raise ConfigError(f"filters must be a list of filter types; got {filters!r}")
    types = [*filters, *weights, picker]
    for t in types:
        if t not in lp.PLUGINS or lp.PLUGINS[t].KIND not in ("scorer", "filter", "picker"):
            kind = "filter" if t in filters else ("picker" if t == picker else "scorer")
            raise ConfigError(f"{kind} {t!r} is not implemented in the lab; supported {kind}s: "
                              f"{', '.join(lp.supported(kind))}")
    for t in plugin_parameters:
        if t not in lp.PLUGINS:
            raise ConfigError(f"plugin_parameters names plugin {t!r}, which the lab does not implement; "
                              f"supported: {', '.join(lp.supported())}")
    plugins = [{"type": t, "parameters": plugin_parameters.get(t, {})}
               for t in plugin_parameters if t not in types]
    plugins += [{"type": t, "parameters": plugin_parameters.get(t, {})} for t in dict.fromkeys(types)]
    refs = [{"pluginRef": t} for t in filters]
    refs += [{"pluginRef": t, "weight": w} for t, w in weights.items()]
    refs.append({"pluginRef": picker})
    return {"plugins": plugins, "schedulingProfiles": [{"name": "default", "plugins": refs}]}


#: Scorers whose scores read only scraped fields, the router's in-flight counts, or the
#: approximate prefix hit as the router's column: with only these (and no filter) the
#: router need not write every snapshot's per-request fields (``Strategy.reads_columns``).
COLUMN_SAFE_SCORERS = (lp.QueueScorer, lp.RunningRequestsScorer, lp.KvCacheUtilizationScorer,
                       lp.LoadAwareScorer, lp.ActiveRequestScorer, lp.PrefixCacheScorer)


@register
class Weighted(CheckedStrategy):
    __doc__ = __doc__

    name = "weighted"

    def __init__(
        self,
        *,
        seed: int = 0,
        config: str = "",
        profile: str = "",
        weights: dict = DEFAULT_WEIGHTS,  # noqa: B006 - never mutated
        picker: str = "max-score-picker",
        filters: list = [],  # noqa: B006 - never mutated
        plugin_parameters: dict = {},  # noqa: B006 - never mutated
        kv_event_delay_s: float = 0.0,
    ) -> None:
        super().__init__(seed=seed)
        if config:
            inline = (weights is not DEFAULT_WEIGHTS or picker != "max-score-picker" or filters
                      or plugin_parameters)
            if inline:
                raise ConfigError("give either config (an llm-d EndpointPickerConfig file) or the inline "
                                  "weights/picker/filters/plugin_parameters, not both")
            doc = load_config_file(config)
        else:
            if profile:
                raise ConfigError("profile selects a profile of a config file; set config too")
            doc = inline_config(weights, picker, plugin_parameters, list(filters))
        self.config = config
        self.profile = build_profile(doc, profile)
        self.kv_event_delay_s = float(at_least("kv_event_delay_s", kv_event_delay_s, 0.0))
        plugins = self.profile.plugins
        prefix_users = [p for p in plugins if isinstance(p, (lp.Prefixed, lp.PrefixCacheAffinityFilter))]
        producers = [p.producer for p in prefix_users]
        self.needs_prefix_estimate = bool(prefix_users)
        self.needs_precise_prefix = any(p.precise for p in producers)
        self.needs_active_work = any(p.needs_active_work for p in plugins)
        self.needs_scrape = any(p.needs_scrape for p in plugins)
        approx = [p.index_blocks for p in producers if not p.precise]
        self.index_blocks = approx[0] if approx else 0
        #: The plugins that act on a pick (the others inherit ``Plugin.after_pick``, a no-op).
        self._after_pick = [p for p in plugins if type(p).after_pick is not lp.Plugin.after_pick]
        self._reads_columns = (not self.profile.filters and all(
            type(scorer) in COLUMN_SAFE_SCORERS and not getattr(getattr(scorer, "producer", None), "precise", False)
            for scorer, _ in self.profile.scorers))

    @property
    def reads_columns(self) -> bool:  # type: ignore[override]
        # No filter (a filtered view is a plain list) and every scorer reads only what needs
        # no per-request fill: scraped fields, in-flight counts, the approximate hit column.
        return self._reads_columns

    def bind(self, block_size: int) -> None:
        for p in self.profile.plugins:
            if hasattr(p, "block_size"):
                p.block_size = block_size

    def scores(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> list[float]:
        """The weighted sum of every scorer's scores, per candidate.

        llm-d clamps each score to [0, 1] (``enforceScoreRange``); the lab's
        scorers produce scores in that range by construction (tested), so the
        sum skips the clamp.
        """
        scorers = self.profile.scorers
        if len(scorers) == 3:  # llm-d's default profile: one pass, the same sums in the same order
            (sa, wa), (sb, wb), (sc, wc) = scorers
            a, b, c = sa.score(request, backends), sb.score(request, backends), sc.score(request, backends)
            return [x * wa + y * wb + z * wc for x, y, z in zip(a, b, c)]
        total = None
        for scorer, weight in scorers:
            sc = scorer.score(request, backends)
            if total is None:
                total = [x * weight for x in sc]
            else:
                total = [t + x * weight for t, x in zip(total, sc)]
        return total

    def choose(self, request: RequestInfo, backends: Sequence[BackendSnapshot]) -> int:
        if not self.profile.filters:  # every backend is scored: no index map to keep
            pos = self.profile.picker.pick(self.scores(request, backends), self.rng)
            for p in self._after_pick:
                p.after_pick(request, backends, pos)
            return pos
        keep = list(range(len(backends)))
        for f in self.profile.filters:
            view = [backends[i] for i in keep]
            kept = f.keep(request, view, self.rng)
            if not kept:
                break  # (none of the lab's filters empties the set; llm-d would fail the request)
            keep = [keep[i] for i in kept]
        view = backends if len(keep) == len(backends) else [backends[i] for i in keep]
        scores = self.scores(request, view)
        pos = self.profile.picker.pick(scores, self.rng)
        for p in self._after_pick:
            p.after_pick(request, view, pos)
        return keep[pos]
