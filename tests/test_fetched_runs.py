"""Whole runs over http(s) URIs on loopback hosts: fetched images embed as the same file
read from disk does, each refused or failed fetch is one dead-letter line with its reason,
and the summary counts fetches by outcome and records how the run fetched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from http_hosts import PHOTO, serving
from support import dead_letter, parquet_embeddings, run_cli, summary, write_csv

pytestmark = pytest.mark.pipeline_run


def test_a_url_list_embeds_fetched_images_as_files_and_accounts_for_every_url(tmp_path):
    local = tmp_path / "rocket.jpg"
    local.write_bytes(PHOTO)  # what every /photo/ path serves
    with serving(("127.0.0.2", 404), ("127.0.0.3", 404), ("127.0.0.1", 404)) as hosts:
        first, second, outside = hosts
        fetched = [first.url("/photo/a.jpg"), second.url("/photo/b.jpg")]
        missing = first.url("/status/404")
        blocked = outside.url("/photo/c.jpg")  # loopback, and not in the allowed networks
        csv_path = write_csv(tmp_path / "urls.csv", [*fetched, missing, blocked, str(local)])
        output = tmp_path / "out"
        result = run_cli(
            "--input", str(csv_path), "--output", str(output), "--weights", "random",
            "--allow_private_addresses", "127.0.0.2/31", "--requests_per_second_per_host", "50",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert outside.requests() == [], "a refused address was asked"
        asked = [request.path for host in (first, second) for request in host.requests()]

    embeddings = parquet_embeddings(output)
    assert sorted(embeddings) == sorted([*fetched, str(local)])
    for url in fetched:
        np.testing.assert_array_equal(embeddings[url], embeddings[str(local)])
    reasons = {record["uri"]: record["error_type"] for record in dead_letter(output)}
    assert reasons == {missing: "HttpStatusError", blocked: "BlockedAddressError"}
    made = summary(output)
    assert made["fetches"] == {
        "fetched": 2,
        "failed": {"BlockedAddressError": 1, "HTTP 404": 1},
    }
    assert made["fetching"]["allow_private_addresses"] == ["127.0.0.2/31"]
    assert made["fetching"]["ignore_opt_outs"] is False
    # robots.txt once per host, then each image once.
    assert sorted(asked) == sorted(
        ["/robots.txt", "/robots.txt", "/photo/a.jpg", "/photo/b.jpg", "/status/404"]
    )


def test_without_allowed_networks_no_loopback_url_is_asked(tmp_path):
    with serving(("127.0.0.2", 404)) as [host]:
        urls = [host.url(f"/photo/{name}.jpg") for name in "abc"]
        result = run_cli(
            "--input", str(write_csv(tmp_path / "urls.csv", urls)),
            "--output", str(tmp_path / "out"), "--weights", "random",
        )  # fmt: skip
        assert host.requests() == []
    assert result.returncode == 1
    assert "none of the 3 inputs could be embedded" in result.stderr
    kept = Path(result.stderr.strip().splitlines()[-1].split()[-1]).parent
    assert kept.is_dir()


def test_over_150_urls_run_in_the_threads_mode_and_every_one_is_embedded(tmp_path):
    # Past SMALL_INPUT_ROWS the local runner runs a bundle thread per core, each handing
    # its web rows to the process's fetching pool.
    with serving(("127.0.0.2", 404), ("127.0.0.3", 404)) as hosts:
        urls = [hosts[i % 2].url(f"/photo/{i:03d}.jpg") for i in range(160)]
        output = tmp_path / "out"
        result = run_cli(
            "--input", str(write_csv(tmp_path / "urls.csv", urls)), "--output", str(output),
            "--weights", "random", "--allow_private_addresses", "127.0.0.2/31",
            "--max_connections_per_host", "4", "--requests_per_second_per_host", "500",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        served = sorted(request.path for host in hosts for request in host.requests("/photo/"))
    assert served == sorted(f"/photo/{i:03d}.jpg" for i in range(160))  # each once
    assert sorted(parquet_embeddings(output)) == sorted(urls)
    assert summary(output)["fetches"] == {"fetched": 160, "failed": {}}
