"""A candidate module whose own import fails: the error must name the missing dependency."""
import no_such_dependency_for_parity  # noqa: F401


def fn(input, truth, config):
    return input.sum()
