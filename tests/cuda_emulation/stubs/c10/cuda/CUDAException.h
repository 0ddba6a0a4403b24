// Emulator stub (tests/cuda_emulation): see emu_host.h.
#pragma once
#include "emu_host.h"
