/* SPDX-License-Identifier: MIT
 *
 * Umbrella header for the scheduler core library (scheduler/libscheduler.a).
 */
#pragma once
