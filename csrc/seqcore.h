/* seqcore C kernels: every entry point, one header per op family.
 *
 * Conventions (all families):
 *   - explicit int64_t sizes and element strides; const inputs; restrict where true;
 *   - int status return: 0 ok, SEQCORE_EINVAL (-1) bad sizes/arguments, SEQCORE_ENOMEM (-2);
 *   - no globals, no Python headers: every entry point is thread-safe and reentrant
 *     (cffi calls run without the GIL);
 *   - offsets in int64_t, so tensors above 2^31 elements work.
 * build.py reads the headers included below as the cffi cdef: keep them plain declarations.
 */
#ifndef SEQCORE_H
#define SEQCORE_H

#include "common.h"
#include "attention.h"
#include "recurrent.h"
#include "kvcache.h"
#include "convert.h"

#endif
