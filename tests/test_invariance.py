"""The execution points and the final state do not depend on how often the hypervisor
stops, resumes, or moves the state into a fresh Unicorn engine.

Recording uses scripted arrivals (input bytes and timer ticks at given block counts),
synthetic guest time and seeded entropy, so two recordings of the same script must be
identical record for record. One of them is then disturbed with random extra stops and
engine migrations, during recording and during replay."""
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import log_records, record_inproc, replay_inproc
from hypervisor.record import Chaos, ScriptedInput
from logging_channel import records as R


def _essence(recs):
    """Everything in a log that must not depend on hypervisor stops."""
    out = []
    for r in recs:
        if r.kind in (R.INPUT, R.IRQ, R.RNG, R.TSC):
            out.append(r)
        elif r.kind == R.END:
            out.append((r.reason, r.status, r.digest))
    # TSC batches are cut wherever the recorder happened to stop: compare the pairs.
    flat = []
    pairs = []
    for r in out:
        if getattr(r, "kind", None) == R.TSC:
            pairs.extend(zip(r.blocks, r.pcs, r.values))
        else:
            flat.append(r)
    return flat, pairs


arrivals = st.lists(
    st.tuples(st.integers(0, 40_000), st.one_of(st.binary(min_size=1, max_size=12), st.just("tick"))),
    min_size=1, max_size=12)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=arrivals, stop_seed=st.integers(0, 2**32 - 1), migrate_every=st.integers(1, 5))
def test_points_and_state_independent_of_stops_and_migrations(guests, tmp_path, arrivals, stop_seed, migrate_every):
    script = arrivals + [(max(a for a, _ in arrivals) + 1000, None)]
    clean_log, clean_out, clean_end = record_inproc(tmp_path, "mixed.elf", "clean", ScriptedInput(script), seed=1)
    rnd = random.Random(stop_seed)
    horizon = max(clean_end.blocks, 1)
    stops = [rnd.randrange(0, horizon) for _ in range(rnd.randrange(5, 60))]
    chaos = Chaos(stops, migrate_every=migrate_every)
    chaos_log, chaos_out, chaos_end = record_inproc(tmp_path, "mixed.elf", "chaos", ScriptedInput(script), chaos=chaos,
                                                    seed=1)
    assert chaos.count > 0
    assert chaos_out == clean_out
    assert _essence(log_records(chaos_log)) == _essence(log_records(clean_log))

    # Replay the clean log with other random stops and migrations: same output, no divergence.
    stops2 = [rnd.randrange(0, horizon) for _ in range(rnd.randrange(5, 60))]
    out, res = replay_inproc(clean_log, chaos=Chaos(stops2, migrate_every=migrate_every))
    assert res.end is not None and res.status == 0
    assert out == clean_out


def test_many_stops_and_migrations_on_a_long_run(guests, tmp_path):
    """300 random stops, every third one a migration, while replaying the clock guest
    (RDTSC-driven control flow, real host time at record)."""
    log, out, end = record_inproc(tmp_path, "clock.elf", synthetic_ns=0)
    rnd = random.Random(2024)
    stops = [rnd.randrange(0, end.blocks) for _ in range(300)]
    chaos = Chaos(stops, migrate_every=3)
    rout, res = replay_inproc(log, chaos=chaos)
    assert res.status == 0 and rout == out
    assert chaos.count >= 250
