/* Embedding kernels for one dtype T (instantiate.h). tokens: count = N*T entries,
 * int64 (tokens64) or int32 (tokens32, the other NULL), each in [0, vocab)
 * (checked by the caller); W, dW (vocab, dim); out, dy (count, dim). */

/* out[i] = W[token i] */
void FN(embedding_forward)(const int64_t *tokens64, const int32_t *tokens32, const T *W, T *out,
                           int64_t count, int64_t dim) {
    for (int64_t i = 0; i < count; i++) {
        int64_t token = tokens64 ? tokens64[i] : tokens32[i];
        memcpy(out + i * dim, W + token * dim, (size_t)dim * sizeof(T));
    }
}

/* dW = 0 but at the tokens' rows, each the sum of the dy rows of its entries,
 * added in the order of the entries (as the reference) */
void FN(embedding_backward)(const T *dy, const int64_t *tokens64, const int32_t *tokens32, T *dW,
                            int64_t count, int64_t vocab, int64_t dim) {
    memset(dW, 0, (size_t)(vocab * dim) * sizeof(T));
    for (int64_t i = 0; i < count; i++) {
        int64_t token = tokens64 ? tokens64[i] : tokens32[i];
        T *row = dW + token * dim;
        const T *g = dy + i * dim;
        for (int64_t j = 0; j < dim; j++)
            row[j] += g[j];
    }
}
