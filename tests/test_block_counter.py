"""The block counter: inline (the patched Unicorn counts in translated code) and hook
(ftvm's C block hook) count the same blocks and stop at the same points, and the
inline one is what runs when setup built it.

Each test picks the counter by FTVM_COUNTER; the choice is made when an engine is
created (counter.mode() is cached per process, so the tests clear that cache)."""
import random

import pytest

from conftest import log_records, record_inproc, replay_inproc
from hypervisor import counter
from hypervisor.record import Chaos, ScriptedInput
from test_invariance import _essence

needs_inline = pytest.mark.skipif(not counter.inline_available(),
                                  reason="the loaded Unicorn has no inline counter (stock wheel)")


@pytest.fixture
def use_counter(monkeypatch):
    """use_counter('hook' | 'inline'): engines created from now on count that way."""
    def use(mode):
        monkeypatch.setenv(counter.ENV, mode)
        counter.mode.cache_clear()
        assert counter.mode() == mode
    yield use
    monkeypatch.delenv(counter.ENV, raising=False)
    counter.mode.cache_clear()


def test_inline_counter_is_in_use_when_built(monkeypatch):
    info = counter.build_info()
    if not info:
        pytest.skip("no record of setup's Unicorn build in this environment")
    if not info.get("inline"):
        pytest.skip(f"the patched Unicorn did not build here: {info.get('reason')}")
    monkeypatch.delenv(counter.ENV, raising=False)
    counter.mode.cache_clear()
    try:
        assert counter.inline_available(), "setup installed the patched Unicorn, but it is not the one loaded"
        assert counter.mode() == "inline"
    finally:
        counter.mode.cache_clear()


@needs_inline
def test_inline_engine_has_no_block_hook(guests, use_counter):
    """With the inline counter no UC_HOOK_BLOCK is installed, nor RDTSC/RDTSCP hooks
    (the patched engine calls ftvm's clock from the translated code), and blocks
    still count."""
    from hypervisor import elf_loader
    from hypervisor.vcpu import VCPU

    use_counter("inline")
    _, image = elf_loader.load_file(guests / "compute.elf")

    class NoPorts:
        def port_in(self, port, size):
            return 0

        def port_out(self, port, size, value):
            vcpu.uc.emu_stop()

    vcpu = VCPU(image, 1 << 20, NoPorts())
    hooks_inline = len(vcpu._hooks)
    vcpu.run()
    assert vcpu.cpu.blocks > 0 and vcpu.cpu.block_pc != 0
    use_counter("hook")
    other = VCPU(image, 1 << 20, NoPorts())
    assert len(other._hooks) == hooks_inline + 3      # the block hook, RDTSC and RDTSCP hooks


def test_bad_counter_name_is_an_operating_error(monkeypatch):
    monkeypatch.setenv(counter.ENV, "fast")
    counter.mode.cache_clear()
    try:
        with pytest.raises(counter.FtvmError, match="FTVM_COUNTER"):
            counter.mode()
    finally:
        counter.mode.cache_clear()


@needs_inline
@pytest.mark.parametrize("guest", ["mixed.elf", "clock.elf"])
def test_inline_and_hook_record_the_same_log(guests, tmp_path, use_counter, guest):
    """Same guest, same script: the same execution points (block counts, RDTSC block
    pcs) and the same final state either way; each log replays with the other counter."""
    script = [(500, b"abc"), (2_000, "tick"), (9_000, b"x\n"), (30_000, None)] if guest == "mixed.elf" else None
    use_counter("hook")
    hook_log, hook_out, hook_end = record_inproc(tmp_path, guest, "hook",
                                                 ScriptedInput(list(script)) if script else None, seed=3)
    use_counter("inline")
    inl_log, inl_out, inl_end = record_inproc(tmp_path, guest, "inline",
                                              ScriptedInput(list(script)) if script else None, seed=3)
    assert hook_end.blocks > 0
    assert inl_out == hook_out
    assert _essence(log_records(inl_log)) == _essence(log_records(hook_log))

    out, res = replay_inproc(hook_log)              # inline replays the hook's log
    assert res.status == 0 and out == hook_out
    use_counter("hook")
    out, res = replay_inproc(inl_log)               # and the other way round
    assert res.status == 0 and out == inl_out


@pytest.mark.parametrize("mode", ["hook", "inline"])
def test_exact_stops_and_migrations_either_way(guests, tmp_path, use_counter, mode):
    """Random extra stops (some moving the state into a fresh engine, which must be
    given the counter again) change nothing, with either counter."""
    if mode == "inline" and not counter.inline_available():
        pytest.skip("the loaded Unicorn has no inline counter (stock wheel)")
    use_counter(mode)
    script = [(300, b"hello"), (1_500, "tick"), (4_000, b"\n"), (20_000, None)]
    clean_log, clean_out, clean_end = record_inproc(tmp_path, "mixed.elf", "clean", ScriptedInput(list(script)),
                                                    seed=1)
    rnd = random.Random(14)
    stops = sorted(rnd.randrange(1, clean_end.blocks) for _ in range(40))
    chaos = Chaos(stops, migrate_every=2)
    chaos_log, chaos_out, _ = record_inproc(tmp_path, "mixed.elf", "chaos", ScriptedInput(list(script)),
                                            chaos=chaos, seed=1)
    assert chaos.count == len(set(stops))           # every stop landed exactly on its block
    assert chaos_out == clean_out
    assert _essence(log_records(chaos_log)) == _essence(log_records(clean_log))
