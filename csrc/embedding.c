/* Embedding lookup and its scatter-add gradient. */
#include <string.h>
#include "common.h"

#define TEMPLATE "embedding_impl.h"
#include "instantiate.h"
