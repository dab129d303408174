/** Gradient-norm clipping as torch.nn.utils.clip_grad_norm_ (L2 over all gradients). */
import type { Tensor } from '../tensor/tensor.js';

/** Scales all gradients so their global L2 norm is at most maxNorm; returns the norm before. */
export function clipGradNorm(params: Tensor[], maxNorm: number): number {
  let sq = 0;
  for (const p of params) if (p.grad) for (const g of p.grad) sq += g * g;
  const total = Math.sqrt(sq);
  const coef = maxNorm / (total + 1e-6);
  if (coef < 1) for (const p of params) if (p.grad) for (let i = 0; i < p.grad.length; i++) p.grad[i]! *= coef;
  return total;
}
