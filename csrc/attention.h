#ifndef SEQCORE_ATTENTION_H
#define SEQCORE_ATTENTION_H
#include <stdint.h>

#endif
