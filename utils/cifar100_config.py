"""CIFAR-100 task order and per-task normalization statistics (spec §6.1)."""

# The 20 super-classes in the paper's learning order (alphabetical); task id = index + 1.
CIFAR100_TASKS = [
    'aquatic_mammals',
    'fish',
    'flowers',
    'food_containers',
    'fruit_and_vegetables',
    'household_electrical_devices',
    'household_furniture',
    'insects',
    'large_carnivores',
    'large_man-made_outdoor_things',
    'large_natural_outdoor_scenes',
    'large_omnivores_and_herbivores',
    'medium_mammals',
    'non-insect_invertebrates',
    'people',
    'reptiles',
    'small_mammals',
    'trees',
    'vehicles_1',
    'vehicles_2',
]

# task -> (mean, std), RGB order, pixel values in [0, 1]; copied from the original's table so
# that normalization matches the published runs exactly.
NORM_STATS = {
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'two_class': ((0.5071, 0.4866, 0.4409), (0.26, 0.2517, 0.268)),
    'aquatic_mammals': ((0.4242, 0.4783, 0.4975), (0.2495, 0.2327, 0.2515)),
    'fish': ((0.4162, 0.4626, 0.4577), (0.2857, 0.2574, 0.2705)),
    'flowers': ((0.5233, 0.4080, 0.3058), (0.2892, 0.2489, 0.2613)),
    'food_containers': ((0.5824, 0.5459, 0.5111), (0.2761, 0.2782, 0.2888)),
    'fruit_and_vegetables': ((0.6010, 0.4927, 0.3616), (0.2902, 0.2837, 0.2952)),
    'household_electrical_devices': ((0.5573, 0.5368, 0.5251), (0.2933, 0.2937, 0.3028)),
    'household_furniture': ((0.6104, 0.5407, 0.4902), (0.2603, 0.2774, 0.2956)),
    'insects': ((0.5568, 0.5380, 0.4312), (0.2736, 0.2630, 0.2923)),
    'large_carnivores': ((0.4719, 0.4395, 0.3713), (0.2352, 0.2244, 0.2276)),
    'large_man-made_outdoor_things': ((0.4848, 0.5094, 0.5116), (0.2408, 0.2411, 0.2736)),
    'large_natural_outdoor_scenes': ((0.4684, 0.4971, 0.5026), (0.2349, 0.2283, 0.2731)),
    'large_omnivores_and_herbivores': ((0.4832, 0.4650, 0.3997), (0.2428, 0.2375, 0.2373)),
    'medium_mammals': ((0.4511, 0.4291, 0.3669), (0.2355, 0.2248, 0.2261)),
    'non-insect_invertebrates': ((0.5093, 0.4760, 0.4164), (0.2645, 0.2566, 0.2684)),
    'people': ((0.5193, 0.4570, 0.4242), (0.2801, 0.2735, 0.2794)),
    'reptiles': ((0.4877, 0.4781, 0.4336), (0.2619, 0.2418, 0.2526)),
    'small_mammals': ((0.5117, 0.4798, 0.4125), (0.2389, 0.2288, 0.2377)),
    'trees': ((0.4544, 0.4833, 0.4314), (0.2356, 0.2345, 0.2817)),
    'vehicles_1': ((0.4979, 0.4858, 0.4642), (0.2633, 0.2609, 0.2733)),
    'vehicles_2': ((0.5301, 0.5280, 0.5037), (0.2730, 0.2693, 0.2874)),
}
