// libsystemd's sd-daemon calls, loaded on first use with dlopen(3). tcp-crossover uses libsystemd as the
// implementation of the activation and notification protocols, but only a process that systemd started needs it:
// loading it (and libcap, libgcrypt, libgpg-error, liblzma, libzstd, liblz4) costs about 0.6 ms, which a process
// started per connection by inetd would pay for nothing.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <systemd/sd-daemon.h>
#include "CLinux.h"

static struct {
    __typeof__(sd_listen_fds_with_names) *listen_fds_with_names;
    __typeof__(sd_notify) *notify;
    __typeof__(sd_watchdog_enabled) *watchdog_enabled;
    // Optional: the file descriptor store is used only when it is there.
    __typeof__(sd_pid_notify_with_fds) *pid_notify_with_fds;
    const char *error;
} libsystemd;

static pthread_once_t libsystemd_once = PTHREAD_ONCE_INIT;

static void load_libsystemd(void) {
    void *handle = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        libsystemd.error = dlerror();
        return;
    }
    libsystemd.listen_fds_with_names = dlsym(handle, "sd_listen_fds_with_names");
    libsystemd.notify = dlsym(handle, "sd_notify");
    libsystemd.watchdog_enabled = dlsym(handle, "sd_watchdog_enabled");
    libsystemd.pid_notify_with_fds = dlsym(handle, "sd_pid_notify_with_fds");
    if (!libsystemd.listen_fds_with_names || !libsystemd.notify || !libsystemd.watchdog_enabled) {
        libsystemd.error = "libsystemd.so.0 lacks the sd-daemon functions";
        libsystemd.listen_fds_with_names = NULL;
        libsystemd.notify = NULL;
        libsystemd.watchdog_enabled = NULL;
    }
}

const char *tcx_systemd_load(void) {
    pthread_once(&libsystemd_once, load_libsystemd);
    return libsystemd.listen_fds_with_names ? NULL : (libsystemd.error ? libsystemd.error : "libsystemd.so.0 not loaded");
}

int tcx_sd_listen_fds_with_names(int unset_environment, char ***names) {
    if (tcx_systemd_load() != NULL) return -ENOSYS;
    return libsystemd.listen_fds_with_names(unset_environment, names);
}

int tcx_sd_notify(int unset_environment, const char *state) {
    if (tcx_systemd_load() != NULL) return -ENOSYS;
    return libsystemd.notify(unset_environment, state);
}

int tcx_sd_watchdog_enabled(int unset_environment, uint64_t *usec) {
    if (tcx_systemd_load() != NULL) return -ENOSYS;
    return libsystemd.watchdog_enabled(unset_environment, usec);
}

int tcx_sd_notify_with_fds(const char *state, const int *fds, unsigned n_fds) {
    if (tcx_systemd_load() != NULL) return -ENOSYS;
    if (libsystemd.pid_notify_with_fds == NULL) return -ENOSYS;
    return libsystemd.pid_notify_with_fds(0, 0, state, fds, n_fds);
}
