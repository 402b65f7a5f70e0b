// Versions live in gradle/libs.versions.toml; modules apply the plugins they need.
plugins {
    alias(libs.plugins.android.application) apply false
    alias(libs.plugins.kotlin.android) apply false
}
