"""Config: every mistake is refused when the Config is built, by name.

The hooks fail open, so a value that only fails when the first training step uses it (a
mistyped monitor URL, a missing lexicon file) would silently switch monitoring or reweighting
off for the whole run. These cases were all accepted by ``Config(...)`` before.
"""

from __future__ import annotations

import pytest

from phasewatch import Config, Lexicon, Monitor


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"alpha": None}, r"alpha: expected a number, got None"),
        ({"alpha": float("nan")}, r"alpha: expected a number, got NaN"),
        ({"alpha": True}, r"alpha: expected a number"),
        ({"ramp_steps": 2.5}, r"ramp_steps: expected a whole number, got 2.5"),
        ({"ramp_steps": "x"}, r"ramp_steps: expected a number, got 'x'"),
        ({"metrics_port": "abc"}, r"metrics_port: expected a number, got 'abc'"),
        ({"metrics_port": True}, r"metrics_port: expected a number, got True"),
        ({"lexicon": []}, r"lexicon: no phrases given"),
        ({"lexicon": ["wait", ""]}, r"lexicon: lexicon phrase '': empty"),
        ({"lexicon": 123}, r"lexicon: expected None .* got int"),
        ({"monitor": "127.0.0.1:8765"}, r"monitor: '127.0.0.1:8765' is not an http\(s\) URL"),
        ({"monitor": "http//host:8765"}, r"monitor: 'http//host:8765' is not an http\(s\) URL"),
        ({"monitor": "http://host:port"}, r"monitor: 'http://host:port' is not an http\(s\) URL"),
        ({"monitor": 5}, r"monitor: expected None \(in-process monitor\), a URL \(str\) or a phasewatch.Monitor, got int"),
        ({"grafana_url": "grafana.local:3000"}, r"grafana_url: 'grafana.local:3000' is not an http\(s\) URL"),
        ({"monitor": "http://127.0.0.1:8765", "store": "runs.db"}, r"store: applies to the in-process monitor only"),
        ({"monitor": "http://127.0.0.1:8765", "metrics_port": 9811}, r"metrics_port: applies to the in-process monitor"),
        ({"monitor": "http://127.0.0.1:8765", "grafana_url": "http://g:3000"}, r"grafana_url: applies to the in-process"),
        ({"pause_on": "entropy_explosion"}, r"pause_on: expected a list of event kinds"),
        ({"pause_on": ["entropy_explosoin"]}, r"pause_on: unknown event kind\(s\) \['entropy_explosoin'\]"),
        ({"pause_steps": -1}, r"pause_steps: must be >= 0 or None, got -1"),
        ({"pause_steps": 1.5}, r"pause_steps: expected a whole number, got 1.5"),
        ({"save_rollouts": 7}, r"save_rollouts: expected a file path"),
        ({"save_rollouts": " "}, r"save_rollouts: expected a file path"),
        ({"rollouts_max_bytes": 0}, r"rollouts_max_bytes: must be positive or None, got 0"),
        ({"rollouts_max_bytes": "big"}, r"rollouts_max_bytes: expected a number, got 'big'"),
    ],
)
def test_bad_values_are_refused_at_construction_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Config(run="r", **kwargs)


def test_a_missing_lexicon_file_is_refused_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="lexicon file not found: .*nope.txt"):
        Config(run="r", lexicon=tmp_path / "nope.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="contains no phrases"):
        Config(run="r", lexicon=str(empty))
    good = tmp_path / "mine.txt"
    good.write_text("let me verify\n", encoding="utf-8")
    assert Config(run="r", lexicon=str(good)).lexicon == str(good)  # a path stays a path


def test_values_are_normalised_and_iterables_kept_usable():
    config = Config(run="r", alpha="0.3", ramp_steps=4.0, metrics_port="9811")
    assert (config.alpha, config.ramp_steps, config.metrics_port) == (0.3, 4, 9811)
    # a generator can be read once: the Config must keep the phrases, not the spent generator
    config = Config(run="r", lexicon=(p for p in ["wait", "let me verify"]))
    assert isinstance(config.lexicon, Lexicon) and config.lexicon.phrases == ("wait", "let me verify")


def test_a_monitor_object_brings_its_own_store(tmp_path):
    monitor = Monitor()
    try:
        assert Config(run="r", monitor=monitor).monitor is monitor
        with pytest.raises(ValueError, match="store: the Monitor passed as monitor= has its own store"):
            Config(run="r", monitor=monitor, store=tmp_path / "x.db")
    finally:
        monitor.close()


def test_good_remote_and_local_configurations_pass():
    assert Config(run="r", monitor="https://pw.example.com/", server_token="t").monitor == "https://pw.example.com/"
    local = Config(run="r", store="runs.db", metrics_port=0, grafana_url="http://127.0.0.1:3000")
    assert local.metrics_port == 0


def test_rollout_and_pause_settings_are_normalised(tmp_path):
    config = Config(run="r", save_rollouts=str(tmp_path / "r.jsonl"), pause_on=["entropy_collapse"], pause_steps=4.0)
    assert config.save_rollouts == tmp_path / "r.jsonl"
    assert config.pause_on == ("entropy_collapse",) and config.pause_steps == 4
    assert Config(run="r").save_rollouts is None and Config(run="r").rollouts_max_bytes == 1 << 30
    with pytest.raises(ValueError, match=r"save_rollouts: .* is a directory; give a file path such as"):
        Config(run="r", save_rollouts=tmp_path)
