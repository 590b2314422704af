#ifndef SEQCORE_RECURRENT_H
#define SEQCORE_RECURRENT_H
#include <stdint.h>

#endif
