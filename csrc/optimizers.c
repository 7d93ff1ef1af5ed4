/* Optimizer steps, each one pass over param, grad and state, in place. */
#include "common.h"

/* the options that change an optimizer's loop (struct step_args.flags) */
enum { SGD_MOMENTUM = 1, SGD_NESTEROV = 2, SGD_WD = 4, SGD_LR_IN_VELOCITY = 8 };
enum { RMS_WD = 1, RMS_CENTERED = 2, RMS_MOMENTUM = 4 };
enum { ADAM_L2 = 1, ADAM_DECOUPLED = 2, ADAM_AMSGRAD = 4 };

#define TEMPLATE "optimizers_impl.h"
#include "instantiate.h"
