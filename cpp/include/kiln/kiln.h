#pragma once
// Everything an embedding program needs.
#include "kiln/engine.h"
#include "kiln/error.h"
#include "kiln/generate.h"
#include "kiln/manifest.h"
#include "kiln/npy.h"
#include "kiln/tensor.h"
