"""backends/gpus.py: the job's GPU mask, resolved to UUIDs through NVML (fake) or nvidia-smi (fake)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from gpukit import uuid_of

from pytest_sglang_tune.backends.gpus import (
    DevicePool,
    GpuDevice,
    GpuMask,
    Inventory,
    device_pool,
    gpu_machine_info,
    parse_smi_csv,
    read_inventory,
    read_mask,
    resolve_mask,
)


@pytest.mark.parametrize(("env", "expected"), [
    ({}, GpuMask()),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, GpuMask("CUDA_VISIBLE_DEVICES", "3,5", ("3", "5"))),
    ({"CUDA_VISIBLE_DEVICES": " 3 , 5 "}, GpuMask("CUDA_VISIBLE_DEVICES", " 3 , 5 ", ("3", "5"))),
    ({"CUDA_VISIBLE_DEVICES": ""}, GpuMask("CUDA_VISIBLE_DEVICES", "", ())),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, GpuMask("CUDA_VISIBLE_DEVICES", "-1", ())),
    ({"CUDA_VISIBLE_DEVICES": "2,-1,4"}, GpuMask("CUDA_VISIBLE_DEVICES", "2,-1,4", ("2",))),
    ({"CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "3,5"}, GpuMask("CUDA_VISIBLE_DEVICES", "1", ("1",))),
    ({"NVIDIA_VISIBLE_DEVICES": "all"}, GpuMask("NVIDIA_VISIBLE_DEVICES", "all", None)),
    ({"NVIDIA_VISIBLE_DEVICES": "void"}, GpuMask("NVIDIA_VISIBLE_DEVICES", "void", ())),
    ({"NVIDIA_VISIBLE_DEVICES": "none"}, GpuMask("NVIDIA_VISIBLE_DEVICES", "none", ())),
    ({"NVIDIA_VISIBLE_DEVICES": "GPU-abc,GPU-def"},
     GpuMask("NVIDIA_VISIBLE_DEVICES", "GPU-abc,GPU-def", ("GPU-abc", "GPU-def"))),
])
def test_read_mask(env: dict[str, str], expected: GpuMask) -> None:
    assert read_mask(env) == expected


EIGHT = Inventory(tuple(GpuDevice(i, uuid_of(i), "NVIDIA H200") for i in range(8)), "nvml", "NVML reports 8 GPU(s)")


@pytest.mark.parametrize(("env", "indices"), [
    ({}, [0, 1, 2, 3, 4, 5, 6, 7]),
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, [3, 5]),
    ({"CUDA_VISIBLE_DEVICES": "5,3"}, [5, 3]),                              # the mask's order
    ({"CUDA_VISIBLE_DEVICES": f"{uuid_of(6)},2"}, [6, 2]),                  # UUIDs and indices mixed
    ({"CUDA_VISIBLE_DEVICES": uuid_of(4)[:20]}, [4]),                        # a unique prefix, as CUDA allows
    ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, [1]),
    ({"NVIDIA_VISIBLE_DEVICES": "3,5"}, [3, 5]),                             # on the host: host indices
    ({"NVIDIA_VISIBLE_DEVICES": f"{uuid_of(7)}"}, [7]),
])
def test_resolve_mask_to_uuids(env: dict[str, str], indices: list[int]) -> None:
    assert [d.uuid for d in resolve_mask(read_mask(env), EIGHT)] == [uuid_of(i) for i in indices]


def test_nvidia_visible_devices_inside_the_container_it_configured() -> None:
    # a runner container started with --gpus '"device=3,5"': NVML inside sees two GPUs, indices 0 and 1
    two = Inventory((GpuDevice(0, uuid_of(3)), GpuDevice(1, uuid_of(5))), "nvml", "NVML reports 2 GPU(s)")
    assert [d.uuid for d in resolve_mask(read_mask({"NVIDIA_VISIBLE_DEVICES": "3,5"}), two)] == \
        [uuid_of(3), uuid_of(5)]


def test_mig_devices_pass_through() -> None:
    (dev,) = resolve_mask(read_mask({"CUDA_VISIBLE_DEVICES": "MIG-1f2e3d4c-aaaa-bbbb-cccc-0123456789ab"}), EIGHT)
    assert dev == GpuDevice(None, "MIG-1f2e3d4c-aaaa-bbbb-cccc-0123456789ab", "MIG device")


@pytest.mark.parametrize(("value", "message"), [
    ("3,9", "CUDA_VISIBLE_DEVICES=3,9: index 9 names no GPU (NVML reports 8 GPU(s), indices 0..7; indices are in "
            "PCI bus order, as nvidia-smi shows them)"),
    ("GPU-ffffffff", "CUDA_VISIBLE_DEVICES=GPU-ffffffff: no GPU has the UUID 'GPU-ffffffff' (NVML reports 8 GPU(s): "
                     f"{uuid_of(0)}, "),
    ("GPU-0000000", "CUDA_VISIBLE_DEVICES=GPU-0000000: 'GPU-0000000' is a prefix of 8 GPU UUIDs; give more of it"),
    ("gpu3", "CUDA_VISIBLE_DEVICES=gpu3: 'gpu3' is neither a GPU index nor a UUID (GPU-… or MIG-…)"),
    (f"3,{uuid_of(3)}", f"CUDA_VISIBLE_DEVICES=3,{uuid_of(3)}: names the same GPU twice ({uuid_of(3)})"),
])
def test_a_mask_entry_that_names_no_gpu_is_an_error(value: str, message: str) -> None:
    with pytest.raises(pytest.UsageError) as exc:
        resolve_mask(read_mask({"CUDA_VISIBLE_DEVICES": value}), EIGHT)
    assert str(exc.value).startswith(message)


def test_without_an_inventory_the_entries_pass_through() -> None:
    none = Inventory((), "none", "no GPU on this host (no NVML, no nvidia-smi)")
    pool = DevicePool(resolve_mask(read_mask({"CUDA_VISIBLE_DEVICES": "3,5"}), none), read_mask(
        {"CUDA_VISIBLE_DEVICES": "3,5"}), none)
    assert pool.ids([0, 1]) == ["3", "5"] and not pool.resolved
    assert pool.child_env([1]) == {"CUDA_VISIBLE_DEVICES": "5"}  # the job's own numbering: no order change
    assert pool.capacity(None).gpus == 2


def test_pool_hands_on_uuids_in_pci_bus_order() -> None:
    mask = read_mask({"CUDA_VISIBLE_DEVICES": "3,5"})
    pool = DevicePool(resolve_mask(mask, EIGHT), mask, EIGHT)
    assert pool.ids([1, 0]) == [uuid_of(5), uuid_of(3)]
    assert pool.child_env([0, 1]) == {"CUDA_VISIBLE_DEVICES": f"{uuid_of(3)},{uuid_of(5)}",
                                      "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert pool.child_env([]) == {}
    assert pool.slots([uuid_of(5), uuid_of(0)]) == {1}
    assert pool.ids([2]) == ["2"] and pool.slots(["2"]) == {2}   # past the pool (a launcher that needs no GPU)
    cap = pool.capacity(None)
    assert (cap.gpus, cap.source) == (2, "CUDA_VISIBLE_DEVICES=3,5 allows 2 GPU(s) (NVML reports 8 GPU(s))")
    assert pool.capacity(1).gpus == 1


@pytest.mark.parametrize(("env", "gpus", "message"), [
    ({"CUDA_VISIBLE_DEVICES": "3,5"}, 4, "--gpus=4 but CUDA_VISIBLE_DEVICES=3,5 allows 2 GPU(s) (NVML reports 8 "
                                         "GPU(s)); lower --gpus to at most 2 or widen the mask"),
    ({}, 9, "--gpus=9 but NVML reports 8 GPU(s); lower --gpus to at most 8 or widen the mask"),
    ({"CUDA_VISIBLE_DEVICES": ""}, 1, "--gpus=1 but CUDA_VISIBLE_DEVICES= allows 0 GPU(s)"),
])
def test_gpus_larger_than_the_mask_is_an_error_naming_both(env: dict[str, str], gpus: int, message: str) -> None:
    mask = read_mask(env)
    with pytest.raises(pytest.UsageError) as exc:
        DevicePool(resolve_mask(mask, EIGHT), mask, EIGHT).capacity(gpus)
    assert str(exc.value).startswith(message)


def test_without_mask_or_inventory_gpus_is_trusted() -> None:
    pool = DevicePool(())
    assert pool.capacity(4).gpus == 4 and pool.ids([0, 3]) == ["0", "3"]


# --- through the fakes: the real NVML and nvidia-smi code paths --------------------------------------------------

@pytest.mark.usefixtures("fake_nvml")
def test_nvml_inventory_and_mask(gpu_host: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_host(8)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    pool = device_pool()
    assert pool.inventory.source == "nvml"
    assert [d.uuid for d in pool.devices] == [uuid_of(3), uuid_of(5)]
    assert pool.devices[0] == GpuDevice(3, uuid_of(3), "NVIDIA H200", 143771, "00000000:1B:00.0")
    assert gpu_machine_info(pool.inventory) == {
        "gpus": [GpuDevice(i, uuid_of(i), "NVIDIA H200", 143771, f"00000000:{0x18 + i:02X}:00.0").to_dict()
                 for i in range(8)],
        "driver_version": "550.54.15", "cuda_version": "12.4", "gpu_source": "nvml"}


@pytest.mark.usefixtures("fake_smi")
def test_nvidia_smi_fallback_reads_the_same(gpu_host: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_host(8, cuda=12060)
    inv = read_inventory()
    assert inv.source == "nvidia-smi" and inv.detail == "nvidia-smi lists 8 GPU(s) on this host"
    assert inv.devices[5] == GpuDevice(5, uuid_of(5), "NVIDIA H200", 143771, "00000000:1D:00.0")
    assert (inv.driver_version, inv.cuda_version) == ("550.54.15", "12.6")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"5,{uuid_of(3)}")
    assert [d.uuid for d in device_pool().devices] == [uuid_of(5), uuid_of(3)]


def test_no_nvml_and_no_nvidia_smi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setenv("PATH", "/nonexistent")
    inv = read_inventory()
    assert inv == Inventory((), "none", "no GPU on this host (no NVML, no nvidia-smi)")


@pytest.mark.usefixtures("fake_nvml")
def test_nvml_that_does_not_load_falls_back(gpu_host: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FAKE_NVML_SPEC", raising=False)  # the fake raises NVMLError_LibraryNotFound, as pynvml does
    monkeypatch.setenv("PATH", "/nonexistent")
    assert read_inventory().source == "none"


def test_parse_smi_csv_real_format() -> None:
    fields = ("index", "uuid", "name", "power.draw", "clocks_event_reasons.active")
    text = ("0, GPU-5e5e8a0c-5c1f-1a6b-3c8b-12ab34cd56ef, NVIDIA H200, 71.23, 0x0000000000000004\n"
            "1, GPU-6f6f8a0c-5c1f-1a6b-3c8b-12ab34cd56ef, NVIDIA H200, [N/A], 0x0000000000000000\n")
    rows = parse_smi_csv(text, fields)
    assert rows[0] == {"index": "0", "uuid": "GPU-5e5e8a0c-5c1f-1a6b-3c8b-12ab34cd56ef", "name": "NVIDIA H200",
                       "power.draw": "71.23", "clocks_event_reasons.active": "0x0000000000000004"}
    assert rows[1]["power.draw"] is None
    from pytest_sglang_tune.backends.gpus import SmiError

    with pytest.raises(SmiError, match=r"printed 2 value\(s\) where 5 were asked"):
        parse_smi_csv("0, x\n", fields)


def test_the_fake_nvidia_smi_speaks_the_real_format(gpu_host: Callable[..., Any], fake_smi: Any) -> None:
    gpu_host(2, series={1: {"power_w": [300.5], "util": [97]}})
    out = subprocess.run([str(fake_smi), "--query-gpu=index,utilization.gpu,power.draw,memory.total",
                          "--format=csv"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["index, utilization.gpu [%], power.draw [W], memory.total [MiB]",
                                "0, 0 %, 70.00 W, 143771 MiB", "1, 97 %, 300.50 W, 143771 MiB"]
    bad = subprocess.run([str(fake_smi), "--query-gpu=index,bogus", "--format=csv"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout.startswith('Field "bogus" is not a valid field to query.')


@pytest.mark.usefixtures("fake_smi")
def test_run_machine_records_names_uuids_driver_and_cuda(gpu_host: Callable[..., Any]) -> None:
    """report.json's run.machine: names (what comparisons use), and UUIDs, driver and CUDA versions beside them."""
    from pytest_sglang_tune.report.store import machine_info

    gpu_host(2, cuda=12060)
    info = machine_info()
    assert info["gpus"] == ["NVIDIA H200", "NVIDIA H200"]
    assert [d["uuid"] for d in info["gpu_details"]] == [uuid_of(0), uuid_of(1)]
    assert (info["driver_version"], info["cuda_version"], info["gpu_source"]) == ("550.54.15", "12.6", "nvidia-smi")
