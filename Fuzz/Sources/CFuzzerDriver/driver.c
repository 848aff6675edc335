// SwiftPM needs a source file in a C target; the declaration in include/CFuzzerDriver.h is all there is.
#include "CFuzzerDriver.h"
