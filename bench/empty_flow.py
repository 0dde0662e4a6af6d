"""The floor of any command whose run is recorded as a Prefect flow run: a new Python process that
imports Prefect and runs one empty flow against the server (bench_reuse's variant f). A reuse run
that builds nothing is still such a run, so it cannot cost less than this."""

from prefect import flow


@flow(name="bench-empty-flow", persist_result=False)
def empty_flow() -> None:
    return None


if __name__ == "__main__":
    empty_flow()
