"""The app's layer: the package of the ``graph`` setting, bundled for the ``turn`` function.

``make package`` reads the app setting exactly as ``agentworker serve`` does (``--config``/
``AGENTWORKER_CONFIG``, ``./agentworker.toml``, ``AGENTWORKER_GRAPH``; unset: the bundled
support example), copies the graph's top-level package into ``build/layers/app/python``
(``/opt/python`` on Lambda, on ``sys.path``), and writes the app's settings beside it as
``agentworker.toml`` (``AGENTWORKER_CONFIG`` of ``turn``, set in ``workers/stack.py``), with
``prompt`` pointing at the bundled copy. The model and the double-texting policy of a
deployment are stack parameters (``bedrockModelId``, ``doubleTexting``): an app file that
says otherwise is refused with the parameter to set.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.params import approval_policies, slack_roles, suggested_prompts, webhook_subscriptions
from workers.agent.app import graph_ref
from workers.config import APP_KEYS, Settings, load_settings
from workers.stack import APP_FILE_ON_LAMBDA, LAYER_DIR_ON_LAMBDA

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "tests", ".pytest_cache")


@dataclass(frozen=True)
class AppBundle:
    graph: str
    package: str
    """The top-level package (or module) of the graph, bundled as is."""
    source: Path
    settings: dict[str, object]
    """The app file written into the layer."""


def resolve(settings: Settings) -> AppBundle:
    """The app to bundle: its graph's top-level package on this machine; ``SystemExit``
    naming the setting when it cannot be found or is not a package."""
    ref = graph_ref(settings)
    module = ref.rpartition(":")[0]
    if module.endswith(".py") or "/" in module:
        raise SystemExit(
            f"package: graph {ref!r}: name it as 'package.module:attribute' to deploy it (a"
            " file path cannot be bundled)"
        )
    top = module.split(".")[0]
    root = str(settings.import_dir.resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        raise SystemExit(f"package: graph {ref!r}: no package {top!r} under {root}")
    origin = Path(spec.origin)
    source = origin.parent if origin.name == "__init__.py" else origin
    return AppBundle(ref, top, source, _app_settings(settings, ref, top, source))


def _app_settings(settings: Settings, ref: str, top: str, source: Path) -> dict[str, object]:
    """What the bundled app file says: the app keys that are set, ``prompt`` moved into the
    layer (it must live in the app's package to be bundled)."""
    out: dict[str, object] = {"graph": ref}
    if settings.approval_tools is not None:
        out["approval_tools"] = list(settings.approval_tools)
    out["context_window"] = settings.context_window
    if settings.prompt_name is not None:
        out["prompt_name"] = settings.prompt_name
    if settings.prompt is not None:
        prompt = settings.prompt.resolve()
        package_dir = source if source.is_dir() else source.parent
        if not prompt.is_relative_to(package_dir):
            raise SystemExit(
                f"package: prompt {prompt}: put it inside the app's package {package_dir} to"
                " bundle it"
            )
        out["prompt"] = f"{LAYER_DIR_ON_LAMBDA}/{top}/{prompt.relative_to(package_dir)}"
    return out


def check_stack_params(settings: Settings, stage_params: Mapping[str, object]) -> list[str]:
    """Where the app file and the stage's parameters disagree on what the stack decides."""
    problems = []
    sources = {key: settings.source(key) for key in APP_KEYS}
    if " in " in sources["double_texting"]:
        wanted = stage_params.get("doubleTexting")
        if wanted != settings.double_texting:
            problems.append(
                f"package: {sources['double_texting']} says {settings.double_texting!r} but"
                f" the stack's doubleTexting is {wanted!r}: set params.<stage>.doubleTexting"
                " in serverless.yml (every function accepts messages with it)"
            )
    if " in " in sources["approval_policies"]:
        wanted = approval_policies(str(stage_params.get("approvalPolicies", "{}")))
        if wanted != settings.approval_policies:
            said = {
                tool: p.model_dump(exclude_defaults=True)
                for tool, p in settings.approval_policies.items()
            }
            problems.append(
                f"package: {sources['approval_policies']} says {said} but the stack's"
                f" approvalPolicies is {stage_params.get('approvalPolicies', '{}')!r}: set"
                " params.<stage>.approvalPolicies in serverless.yml (decisions are accepted"
                " by ingest, approve and slack, which do not load the app)"
            )
    if " in " in sources["slack_roles"]:
        wanted_roles = slack_roles(str(stage_params.get("slackRoles", "{}")))
        if wanted_roles != settings.slack_roles:
            problems.append(
                f"package: {sources['slack_roles']} says {settings.slack_roles} but the stack's"
                f" slackRoles is {stage_params.get('slackRoles', '{}')!r}: set"
                " params.<stage>.slackRoles in serverless.yml (Slack clicks are decided by the"
                " slack function, which does not load the app)"
            )
    hooks = webhook_subscriptions(str(stage_params.get("webhooks", "[]")))
    if [h.model_dump(mode="json") for h in hooks] != [
        h.model_dump(mode="json") for h in settings.webhooks
    ]:
        names = [h.name for h in settings.webhooks]
        problems.append(
            f"package: the app's webhooks are {names} but the stack's webhooks parameter says"
            f" {[h.name for h in hooks]}: set params.<stage>.webhooks in serverless.yml to the"
            " [[webhooks]] of agentworker.toml as a JSON list (every function queues their"
            " deliveries, and only turn loads the app)"
        )
    wanted_prompts = suggested_prompts(str(stage_params.get("suggestedPrompts", "[]")))
    if " in " in sources["suggested_prompts"] and wanted_prompts != settings.suggested_prompts:
        problems.append(
            f"package: {sources['suggested_prompts']} says {settings.suggested_prompts} but"
            f" the stack's suggestedPrompts is {stage_params.get('suggestedPrompts', '[]')!r}:"
            " set params.<stage>.suggestedPrompts in serverless.yml (Slack's assistant threads"
            " are opened by the slack function, which does not load the app)"
        )
    if " in " in sources["model"] and not settings.model.startswith(("bedrock", "offline")):
        problems.append(
            f"package: {sources['model']} says {settings.model!r}; the stack runs Bedrock"
            " (params bedrockModelId, bedrockRegion)"
        )
    return problems


def build_layer(bundle: AppBundle, out: Path) -> Path:
    """Write the app layer into ``out/python``: the package and its app file."""
    target = out / "python"
    shutil.rmtree(out, ignore_errors=True)
    target.mkdir(parents=True)
    if bundle.source.is_dir():
        shutil.copytree(bundle.source, target / bundle.package, ignore=IGNORED)
    else:
        shutil.copy2(bundle.source, target / bundle.source.name)
    lines = [f"{key} = {json.dumps(value)}" for key, value in bundle.settings.items()]
    (target / Path(APP_FILE_ON_LAMBDA).name).write_text(
        "# Written by make package: the app the turn function serves.\n" + "\n".join(lines) + "\n"
    )
    return target


def main_settings() -> Settings:
    """The app settings ``make package`` bundles (as ``agentworker serve`` would read them)."""
    return load_settings()
