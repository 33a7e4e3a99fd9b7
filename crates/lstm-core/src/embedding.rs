//! Embedding lookup and its gradient (a scatter-add: repeated ids accumulate).

use crate::{Error, check_len};

/// Copies row `ids[k]` of `table` (`V × D`) into row `k` of `out` (`ids.len() × D`).
pub fn embedding_forward(table: &[f32], dim: usize, ids: &[u32], out: &mut [f32]) -> Result<(), Error> {
    check_len("embedding output", out.len(), ids.len() * dim)?;
    let vocab = table.len().checked_div(dim).unwrap_or(0);
    for (&id, row) in ids.iter().zip(out.chunks_exact_mut(dim.max(1))) {
        let id_us = id as usize;
        if id_us >= vocab {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        row.copy_from_slice(&table[id_us * dim..(id_us + 1) * dim]);
    }
    Ok(())
}

/// Adds row `k` of `d_out` into row `ids[k]` of `d_table`.
pub fn embedding_backward(d_table: &mut [f32], dim: usize, ids: &[u32], d_out: &[f32]) -> Result<(), Error> {
    check_len("embedding output gradient", d_out.len(), ids.len() * dim)?;
    let vocab = d_table.len().checked_div(dim).unwrap_or(0);
    for (&id, row) in ids.iter().zip(d_out.chunks_exact(dim.max(1))) {
        let id_us = id as usize;
        if id_us >= vocab {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        d_table[id_us * dim..(id_us + 1) * dim].iter_mut().zip(row).for_each(|(a, b)| *a += b);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_and_scatter_add() {
        let table = [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]; // V = 3, D = 2
        let mut out = [0.0; 6];
        embedding_forward(&table, 2, &[2, 0, 2], &mut out).unwrap();
        assert_eq!(out, [20.0, 21.0, 0.0, 1.0, 20.0, 21.0]);
        let mut d = [0.0; 6];
        embedding_backward(&mut d, 2, &[2, 0, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(d, [3.0, 4.0, 0.0, 0.0, 6.0, 8.0]);
    }

    #[test]
    fn out_of_range_id_is_an_error() {
        let mut out = [0.0; 2];
        assert_eq!(embedding_forward(&[0.0; 6], 2, &[3], &mut out), Err(Error::TokenOutOfRange { id: 3, vocab: 3 }));
    }
}
