"""The MLP activations: the plain functions' values and gradients, with only the input kept for the backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import erf

from clipjax.models.layers import ACTIVATIONS, MlpBlock

# Written from their definitions, independently of clipjax and Flax.
PLAIN = {
    "gelu": lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
    "quick_gelu": lambda x: x / (1.0 + jnp.exp(-1.702 * x)),
}


def arrays_kept_like(f, x):
    """How many arrays of x's shape the backward pass of f at x keeps (the leaves of its vjp function)."""
    _, backward = jax.vjp(f, x)
    return sum(leaf.shape == x.shape for leaf in jax.tree.leaves(backward))


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_activation_equals_the_plain_function_and_keeps_only_its_input(name):
    assert set(ACTIVATIONS) == set(PLAIN)
    x = jnp.linspace(-6.0, 6.0, 97, dtype=jnp.float32)
    np.testing.assert_allclose(ACTIVATIONS[name](x), PLAIN[name](x), rtol=1e-6, atol=1e-6)
    grad = jax.vmap(jax.grad(ACTIVATIONS[name]))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(PLAIN[name]))(x), rtol=1e-5, atol=1e-6)
    # The plain function's backward keeps intermediates besides x (what the wrapper saves memory on).
    assert arrays_kept_like(PLAIN[name], x) >= 2
    assert arrays_kept_like(ACTIVATIONS[name], x) == 1


def test_mlp_keeps_two_hidden_arrays_for_its_backward_pass():
    """The pre-activation (for the activation's derivative) and the activation (for fc2's weight gradient):
    no third [..., mlp_dim] array."""
    block = MlpBlock(mlp_dim=16, dtype=jnp.bfloat16)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 8)), jnp.float32)
    params = block.init(jax.random.PRNGKey(0), x)
    _, backward = jax.vjp(block.apply, params, x)
    hidden = [leaf for leaf in jax.tree.leaves(backward) if leaf.shape == (2, 5, 16)]
    assert len(hidden) == 2 and all(leaf.dtype == jnp.bfloat16 for leaf in hidden)
