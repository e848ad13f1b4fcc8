//! Building blocks below both training and the metrics' feature network: the Adam optimizer
//! and the checkpoint file format.

pub mod checkpoint;
pub mod optim;

/// candle's backward pass as vqlab builds it (vendor/candle-core, scripts/vendor-candle.sh):
/// a tensor's first gradient is stored as it is, later ones are added to it. These check the
/// sums against gradients worked out by hand.
#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    #[test]
    fn gradients_from_one_and_from_several_consumers_are_the_hand_computed_ones() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), &dev)?;
        let c = Tensor::from_vec(vec![10f32, 20., 30., 40., 50., 60.], (3, 2), &dev)?;
        // f = Σ xᵀ ⊙ c + Σ x ⊙ x + Σ (x + x): df/dx = cᵀ + 2x + 2, from five contributions
        // (the transpose's, the product's two and the sum's two).
        let f = ((x.t()? * &c)?.sum_all()? + (x.as_tensor() * x.as_tensor())?.sum_all()?)?;
        let f = (f + (x.as_tensor() + x.as_tensor())?.sum_all()?)?;
        let grads = f.backward()?;
        let g = grads.get(&x).expect("x has a gradient");
        // cᵀ = [[10, 30, 50], [20, 40, 60]]; 2x + 2 = [[4, 6, 8], [10, 12, 14]].
        assert_eq!(g.to_vec2::<f32>()?, vec![vec![14., 36., 58.], vec![30., 52., 74.]]);
        assert!(g.is_contiguous());

        // One consumer, through a transpose: the stored gradient is the contribution itself,
        // made contiguous (what a zero-filled tensor plus the contribution used to give).
        let y = Var::from_vec(vec![1f32, 2., 3., 4., 5., 6.], (2, 3), &dev)?;
        let w = Tensor::from_vec(vec![1f32, -1., 2., -2., 3., -3.], (3, 2), &dev)?;
        let grads = (y.t()? * &w)?.sum_all()?.backward()?;
        let g = grads.get(&y).expect("y has a gradient");
        assert!(g.is_contiguous());
        assert_eq!(g.to_vec2::<f32>()?, vec![vec![1., 2., 3.], vec![-1., -2., -3.]]);
        // A detached input gets none.
        let z = Var::from_vec(vec![1f32, 2.], 2, &dev)?;
        let grads = (z.as_tensor().detach() * 3.0)?.sum_all()?.backward()?;
        assert!(grads.get(&z).is_none());
        Ok(())
    }
}
