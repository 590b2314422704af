/* LSTM, GRU and Elman RNN sequence kernels, forward and backward, float32 and float64.
 *
 * PyTorch's layout: LSTM gates i, f, g, o; GRU gates r, z, n; Elman (torch.nn.RNN) one gate,
 * h' = act(x @ w_ih^T + b_ih + h @ w_hh^T + b_hh), act = tanh, or relu when `relu` is
 * nonzero. x (T, B, I), w_ih (G*H, I),
 * w_hh (G*H, H), b_ih/b_hh (G*H,) (NULL: zeros), h0/c0 (B, H) (NULL: zeros), y (T, B, H),
 * states (B, H); every array contiguous. lengths: NULL (all T) or (B,) with 0 <= len <= T:
 * element b runs its first len steps (with reverse, the last of them first); y is zero past
 * them and h_n/c_n hold the state after its last valid step.
 * ws: NULL, or (T, B, 5H) LSTM [i, f, g, o, c_t] / (T, B, 4H) GRU [r, z, n, W_hn h + b_hn] /
 * (T, B, H) Elman [h_t], which the backward reads together with y. dy, dh_n, dc_n may be NULL (zeros).
 * LSTM with a projection (torch's proj_size), seqcore_lstm_proj_*: w_hr (P, H), P >= 1,
 * h_t = (o * tanh(c_t)) @ w_hr^T, so w_hh is (4H, P), h0/h_n/dh_n/dh0 (B, P), y/dy (T, B, P),
 * c0/c_n (B, H), ws as without it (T, B, 5H); the backward adds dw_hr (P, H). w_hr NULL
 * (with P = H) is the plain LSTM: seqcore_lstm_fwd/bwd are these calls so.
 * Return 0, -1 (SEQCORE_EINVAL) for bad sizes or missing arrays, -2 (SEQCORE_ENOMEM).
 * Thread-safe; OpenMP inside.
 */
#ifndef SEQCORE_RECURRENT_H
#define SEQCORE_RECURRENT_H
#include <stdint.h>

int seqcore_lstm_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *x,
                         const float *w_ih, const float *w_hh, const float *b_ih,
                         const float *b_hh, const float *h0, const float *c0,
                         const int64_t *lengths, int reverse,
                         float *y, float *h_n, float *c_n, float *ws);
int seqcore_lstm_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *x,
                         const double *w_ih, const double *w_hh, const double *b_ih,
                         const double *b_hh, const double *h0, const double *c0,
                         const int64_t *lengths, int reverse,
                         double *y, double *h_n, double *c_n, double *ws);
int seqcore_lstm_proj_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const float *x, const float *w_ih, const float *w_hh,
                              const float *b_ih, const float *b_hh, const float *w_hr,
                              const float *h0, const float *c0,
                              const int64_t *lengths, int reverse,
                              float *y, float *h_n, float *c_n, float *ws);
int seqcore_lstm_proj_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const double *x, const double *w_ih, const double *w_hh,
                              const double *b_ih, const double *b_hh, const double *w_hr,
                              const double *h0, const double *c0,
                              const int64_t *lengths, int reverse,
                              double *y, double *h_n, double *c_n, double *ws);
int seqcore_gru_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *x,
                        const float *w_ih, const float *w_hh, const float *b_ih,
                        const float *b_hh, const float *h0,
                        const int64_t *lengths, int reverse,
                        float *y, float *h_n, float *ws);
int seqcore_gru_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *x,
                        const double *w_ih, const double *w_hh, const double *b_ih,
                        const double *b_hh, const double *h0,
                        const int64_t *lengths, int reverse,
                        double *y, double *h_n, double *ws);
int seqcore_rnn_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *x,
                        const float *w_ih, const float *w_hh, const float *b_ih,
                        const float *b_hh, const float *h0,
                        const int64_t *lengths, int reverse, int relu,
                        float *y, float *h_n, float *ws);
int seqcore_rnn_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *x,
                        const double *w_ih, const double *w_hh, const double *b_ih,
                        const double *b_hh, const double *h0,
                        const int64_t *lengths, int reverse, int relu,
                        double *y, double *h_n, double *ws);

int seqcore_lstm_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *dy,
                         const float *dh_n, const float *dc_n, const float *x,
                         const float *w_ih, const float *w_hh, const float *h0,
                         const float *c0, const int64_t *lengths, int reverse,
                         const float *y, const float *ws,
                         float *dx, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh,
                         float *dh0, float *dc0);
int seqcore_lstm_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *dy,
                         const double *dh_n, const double *dc_n, const double *x,
                         const double *w_ih, const double *w_hh, const double *h0,
                         const double *c0, const int64_t *lengths, int reverse,
                         const double *y, const double *ws,
                         double *dx, double *dw_ih, double *dw_hh, double *db_ih,
                         double *db_hh, double *dh0, double *dc0);
int seqcore_lstm_proj_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const float *dy, const float *dh_n, const float *dc_n,
                              const float *x, const float *w_ih, const float *w_hh,
                              const float *w_hr, const float *h0, const float *c0,
                              const int64_t *lengths, int reverse,
                              const float *y, const float *ws,
                              float *dx, float *dw_ih, float *dw_hh, float *db_ih,
                              float *db_hh, float *dw_hr, float *dh0, float *dc0);
int seqcore_lstm_proj_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const double *dy, const double *dh_n, const double *dc_n,
                              const double *x, const double *w_ih, const double *w_hh,
                              const double *w_hr, const double *h0, const double *c0,
                              const int64_t *lengths, int reverse,
                              const double *y, const double *ws,
                              double *dx, double *dw_ih, double *dw_hh, double *db_ih,
                              double *db_hh, double *dw_hr, double *dh0, double *dc0);
int seqcore_gru_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *dy,
                        const float *dh_n, const float *x, const float *w_ih,
                        const float *w_hh, const float *h0,
                        const int64_t *lengths, int reverse,
                        const float *y, const float *ws,
                        float *dx, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh,
                        float *dh0);
int seqcore_gru_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *dy,
                        const double *dh_n, const double *x, const double *w_ih,
                        const double *w_hh, const double *h0,
                        const int64_t *lengths, int reverse,
                        const double *y, const double *ws,
                        double *dx, double *dw_ih, double *dw_hh, double *db_ih,
                        double *db_hh, double *dh0);
int seqcore_rnn_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *dy,
                        const float *dh_n, const float *x, const float *w_ih,
                        const float *w_hh, const float *h0,
                        const int64_t *lengths, int reverse, int relu,
                        const float *y, const float *ws,
                        float *dx, float *dw_ih, float *dw_hh, float *db_ih, float *db_hh,
                        float *dh0);
int seqcore_rnn_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *dy,
                        const double *dh_n, const double *x, const double *w_ih,
                        const double *w_hh, const double *h0,
                        const int64_t *lengths, int reverse, int relu,
                        const double *y, const double *ws,
                        double *dx, double *dw_ih, double *dw_hh, double *db_ih,
                        double *db_hh, double *dh0);

#endif
